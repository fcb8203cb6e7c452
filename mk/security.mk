# The allocator security suite (security/README.md).
#   make bench-security   builds the suite once and runs it under glibc's
#                         malloc, the preload (default, POOL_DEBUG=canary and
#                         POOL_DEBUG=uaf),
#                         jemalloc and mimalloc (when installed) and the C
#                         API (default and POOL_DEBUG=tag); prints the table (BENCHMARKS.md,
#                         "Security suite"). A comparison, not a test.
#   make test-security    part of `make test`: the preload and the C API
#                         catch exactly the cases README "Hardening" says
#                         they catch in the default mode and the preload
#                         with POOL_DEBUG=canary (security/expect-*.txt),
#                         and every harmless twin passes.

SEC_OUT    := target/security
SEC_CFLAGS := $(CFLAGS) -fno-builtin

.PHONY: bench-security test-security security-bin

$(SEC_OUT)/malloc_suite: security/malloc_suite.c security/harness.h c-tests/child.h
	@mkdir -p $(SEC_OUT)
	$(CC) $(SEC_CFLAGS) security/malloc_suite.c -o $@

$(SEC_OUT)/pools_suite: security/pools_suite.c security/harness.h c-tests/child.h include/pools.h lib
	@mkdir -p $(SEC_OUT)
	$(CC) $(SEC_CFLAGS) security/pools_suite.c -o $@ -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)

security-bin: lib $(SEC_OUT)/malloc_suite $(SEC_OUT)/pools_suite

bench-security: security-bin
	security/run.sh $(SEC_OUT)

test: test-security
test-security: security-bin
	@echo "== security suite, preload (security/expect-preload.txt)"
	@LD_PRELOAD=$(MALLOC_SO) $(SEC_OUT)/malloc_suite --expect security/expect-preload.txt
	@echo "== security suite, preload with POOL_DEBUG=canary (security/expect-preload-canary.txt)"
	@POOL_DEBUG=canary LD_PRELOAD=$(MALLOC_SO) $(SEC_OUT)/malloc_suite --expect security/expect-preload-canary.txt
	@echo "== security suite, C API (security/expect-pools.txt)"
	@$(SEC_OUT)/pools_suite --expect security/expect-pools.txt
