# The long race runs (issue #4): the default shared cache under the race
# traffic for SOAK_SECONDS, and how long the legacy lockless pop lasts.
SOAK_SECONDS ?= 600

.PHONY: verify-soak
verify: verify-soak
verify-soak: c-tests-glibc
	$(CT_OUT)/glibc/test_race soak dwcas 60 0 || true
	$(CT_OUT)/glibc/test_race soak xchg $(SOAK_SECONDS) 0
