# courier/Makefile
#
# Built with PGXS against PostgreSQL 15:
#   make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config && make install
# The tests are run by test/run_all.sh (see README), which starts its own
# throwaway clusters; "make installcheck" runs only the pg_regress layer
# against a server you already have.

MODULE_big = courier
# every file of src/ (one concern each; docs/design.md has the map)
OBJS = $(patsubst %.c,%.o,$(sort $(wildcard $(srcdir)/src/*.c)))

EXTENSION = courier
DATA = sql/courier--0.1.sql sql/courier--0.1--0.2.sql sql/courier--0.2--0.3.sql \
	sql/courier--0.3--0.4.sql sql/courier--0.4--0.5.sql sql/courier--0.5--0.6.sql \
	sql/courier--0.6--0.7.sql

REGRESS = register_orders delay_orders logic_stage failures operating close_rule prune_and_progress input_checks receipts
REGRESS_OPTS = --load-extension=courier

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lcurl

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

# PGXS tracks no header dependencies: every object is rebuilt when a header
# of src/ changes (a struct's layout must never differ between two files).
$(OBJS): $(wildcard $(srcdir)/src/*.h)
