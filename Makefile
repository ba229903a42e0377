# courier/Makefile
#
# Built with PGXS against PostgreSQL 15:
#   make PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config && make install
# The tests are run by test/run_all.sh (see README), which starts its own
# throwaway clusters; "make installcheck" runs only the pg_regress layer
# against a server you already have.

MODULE_big = courier
OBJS = \
	src/courier.o \
	src/guc.o \
	src/shmem.o \
	src/switches.o \
	src/claim.o \
	src/closes.o \
	src/retry.o \
	src/logic.o \
	src/tms.o \
	src/dispatch.o \
	src/http.o \
	src/provider.o \
	src/provider_common.o \
	src/provider_generic.o \
	src/limits.o \
	src/api.o \
	src/input.o \
	src/ops.o \
	src/transaction.o \
	src/launcher.o \
	src/worker.o

EXTENSION = courier
DATA = sql/courier--0.1.sql sql/courier--0.1--0.2.sql

REGRESS = register_orders delay_orders logic_stage failures operating close_rule prune_and_progress input_checks
REGRESS_OPTS = --load-extension=courier

PG_CPPFLAGS = -I$(srcdir)/src
SHLIB_LINK = -lcurl

PG_CONFIG ?= /usr/lib/postgresql/15/bin/pg_config
PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)
