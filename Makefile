# libpools: build, test, demo, install.
#   make demo      build and run the demo (glibc, shared library)
#   make test      every test: Rust unit tests, the loom model check, header
#                  drift, C tests with glibc, with musl-gcc -static, and with
#                  jemalloc preloaded underneath (POOL_BACKEND=malloc)
#   make header    copy the header the sources generate to include/pools.h
#   make check-layers   the crate:: edges between modules; fails on a cycle or
#                  an import up the layers of src/lib.rs (part of lint)
#   make install PREFIX=/usr/local

PREFIX    ?= /usr/local
CARGO     ?= cargo
CC        ?= gcc
MUSL_CC   ?= musl-gcc
MUSL_TGT  := x86_64-unknown-linux-musl
CFLAGS    ?= -O2 -g
CFLAGS    += -std=c11 -Wall -Wextra -Werror -D_GNU_SOURCE -pthread -Iinclude

REL       := target/release
MUSL_REL  := target/$(MUSL_TGT)/release
MUSL_LIB  := target/musl/libpools.a
CT_OUT    := target/c-tests
C_TESTS   := $(basename $(notdir $(wildcard c-tests/test_*.c)))
JEMALLOC  := $(shell scripts/jemalloc-path.sh)
VERSION   := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)

.PHONY: all lib musl demo test unit loom lint check-header header check-layers \
        check-layers-selftest c-tests c-tests-glibc \
        c-tests-musl c-tests-jemalloc deps install clean

all: lib

lib:
	$(CARGO) build --release

# The musl libpools.a carries the Rust musl target's libunwind, so that
# `musl-gcc -static prog.c -lpools` needs nothing else (gcc's libgcc_eh is
# built for glibc and does not link statically against musl).
musl: deps
	$(CARGO) rustc --release --lib --target $(MUSL_TGT) --crate-type staticlib
	@mkdir -p target/musl
	@scripts/merge-archives.sh $(MUSL_LIB) $(MUSL_REL)/libpools.a \
	  "$$(rustc --print sysroot)/lib/rustlib/$(MUSL_TGT)/lib/self-contained/libunwind.a"

deps:
	@scripts/ensure-deps.sh

demo: lib
	@mkdir -p target/demo
	$(CC) $(CFLAGS) demo/demo.c -o target/demo/demo -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)
	target/demo/demo

test: deps lint unit loom check-header c-tests test-malloc
	@echo "make test: all passed"

lint: check-layers check-layers-selftest
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings

unit:
	$(CARGO) test --release

# The model check of the shared cache: every interleaving of its real code
# in two-thread scenarios (see shared_cache::loom_tests).
loom:
	RUSTFLAGS="--cfg loom" $(CARGO) test --release --lib --target-dir target/loom loom -- --nocapture

# The committed include/pools.h must be what the sources generate (build.rs
# writes the generated header into cargo's OUT_DIR, never into include/).
# After changing the C API: make header, review, commit include/pools.h.
check-header:
	@CARGO="$(CARGO)" scripts/header.sh check

header:
	@CARGO="$(CARGO)" scripts/header.sh update

# The modules of each crate must form layers (part of lint):
# scripts/check-layers.py lists the crate:: edges between top-level modules
# and fails on a cycle, or on an import that goes up the layer diagram of
# the crate docs (src/lib.rs); --why shows where each edge is.
check-layers:
	@rc=0; for d in src malloc/src; do python3 scripts/check-layers.py $$d || rc=1; done; exit $$rc

# The checker on its fixtures (scripts/testdata/layers-*/expected).
check-layers-selftest:
	@scripts/check-layers-selftest.sh

c-tests: c-tests-glibc c-tests-jemalloc c-tests-musl

# -rdynamic: the memory profile names a call site by the symbol the dynamic
# loader knows (test_debug_haproxy checks the names of its functions).
c-tests-glibc: lib
	@mkdir -p $(CT_OUT)/glibc
	@set -e; for t in $(C_TESTS); do \
	  $(CC) $(CFLAGS) -rdynamic c-tests/$$t.c -o $(CT_OUT)/glibc/$$t -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL); \
	done
	@set -e; for t in $(C_TESTS); do echo "== glibc $$t"; $(CT_OUT)/glibc/$$t; done

# jemalloc underneath the pools: POOL_BACKEND=malloc, so that it serves every
# object as it would for a user who preloads it (by default objects up to
# 32 KiB come from spans, which c-tests-glibc and c-tests-musl cover).
c-tests-jemalloc: c-tests-glibc
	@set -e; for t in $(C_TESTS); do echo "== glibc+jemalloc $$t"; \
	  LD_PRELOAD=$(JEMALLOC) POOL_BACKEND=malloc $(CT_OUT)/glibc/$$t; done

c-tests-musl: musl
	@mkdir -p $(CT_OUT)/musl
	@set -e; for t in $(C_TESTS); do \
	  $(MUSL_CC) -static $(CFLAGS) c-tests/$$t.c -Ltarget/musl -lpools -o $(CT_OUT)/musl/$$t; \
	done
	@set -e; for t in $(C_TESTS); do echo "== musl $$t"; $(CT_OUT)/musl/$$t; done

install: lib install-malloc
	install -d $(DESTDIR)$(PREFIX)/include $(DESTDIR)$(PREFIX)/lib/pkgconfig
	install -m 644 include/pools.h $(DESTDIR)$(PREFIX)/include/pools.h
	install -m 755 $(REL)/libpools.so $(DESTDIR)$(PREFIX)/lib/libpools.so
	install -m 644 $(REL)/libpools.a $(DESTDIR)$(PREFIX)/lib/libpools.a
	sed -e 's|@PREFIX@|$(PREFIX)|g' -e 's|@VERSION@|$(VERSION)|g' pools.pc.in \
	  > $(DESTDIR)$(PREFIX)/lib/pkgconfig/pools.pc

clean:
	$(CARGO) clean

# Further targets, one file per area (benchmarks, long verification runs).
-include $(wildcard mk/*.mk)
