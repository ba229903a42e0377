#include "postgres.h"
#include "courier.h"
void courier_register_launcher(void) {}
