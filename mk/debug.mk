# Issue #6: valgrind and AddressSanitizer see into the pools. A C program
# with a use after pool_free (c-tests/tools/uaf.c) must be reported by
# both tools, and its clean twin must not be. Part of `make test`.
#
#   make test-tools           both
#   make test-valgrind-uaf    under valgrind memcheck (mempool client requests)
#   make test-asan-uaf        built with -fsanitize=address (manual poisoning)

TOOLS_OUT := target/c-tests/tools

.PHONY: test-tools test-valgrind-uaf test-asan-uaf
test: test-tools
test-tools: test-valgrind-uaf test-asan-uaf

test-valgrind-uaf: lib
	@command -v valgrind >/dev/null 2>&1 || scripts/apt-install.sh test-valgrind-uaf valgrind
	@mkdir -p $(TOOLS_OUT)
	$(CC) $(CFLAGS) c-tests/tools/uaf.c -o $(TOOLS_OUT)/uaf -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)
	@echo "== valgrind uaf (clean)"
	@valgrind -q --error-exitcode=99 --leak-check=no --log-file=$(TOOLS_OUT)/vg-clean.log \
	  $(TOOLS_OUT)/uaf || { cat $(TOOLS_OUT)/vg-clean.log; echo "valgrind reported a clean run"; exit 1; }
	@echo "== valgrind uaf bug (must be reported)"
	@rc=0; valgrind -q --error-exitcode=99 --leak-check=no --log-file=$(TOOLS_OUT)/vg-bug.log \
	  $(TOOLS_OUT)/uaf bug || rc=$$?; cat $(TOOLS_OUT)/vg-bug.log; \
	  [ $$rc = 99 ] && grep -q "Invalid write of size 1" $(TOOLS_OUT)/vg-bug.log \
	    && grep -q "main (uaf.c" $(TOOLS_OUT)/vg-bug.log \
	  || { echo "valgrind did not report the use after pool_free (exit $$rc)"; exit 1; }

test-asan-uaf: lib
	@mkdir -p $(TOOLS_OUT)
	$(CC) $(CFLAGS) -O1 -fsanitize=address -fno-omit-frame-pointer c-tests/tools/uaf.c \
	  -o $(TOOLS_OUT)/uaf-asan -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)
	@echo "== asan uaf (clean)"
	@ASAN_OPTIONS=detect_leaks=0 $(TOOLS_OUT)/uaf-asan 2>$(TOOLS_OUT)/asan-clean.log \
	  || { cat $(TOOLS_OUT)/asan-clean.log; echo "ASan reported a clean run"; exit 1; }
	@echo "== asan uaf bug (must be reported)"
	@rc=0; ASAN_OPTIONS=detect_leaks=0:exitcode=23 $(TOOLS_OUT)/uaf-asan bug \
	  2>$(TOOLS_OUT)/asan-bug.log || rc=$$?; cat $(TOOLS_OUT)/asan-bug.log; \
	  [ $$rc = 23 ] && grep -q "use-after-poison" $(TOOLS_OUT)/asan-bug.log \
	  || { echo "ASan did not report the use after pool_free (exit $$rc)"; exit 1; }
