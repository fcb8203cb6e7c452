# Long verification runs (issue 4): Miri, ThreadSanitizer, AddressSanitizer
# and valgrind, each by one command; `make verify` runs them all. Each target
# installs what it lacks (nightly components with rustup, valgrind with
# apt-get as root) or stops with the command to run. Results and the planted
# bugs each one caught are in VERIFICATION.md.
#
#   make verify-miri       Rust unit tests + tests/stress.rs under Miri
#   make verify-tsan       Rust unit tests + tests/stress.rs under TSan
#   make verify-asan       every C test with ASan + LeakSanitizer
#   make verify-valgrind   every C test under valgrind memcheck
#   make verify-loom       the three-thread loom model at preemption bound 40
#   make verify-hot-functions  the preload's hot functions, profiled again
#                          with callgrind, all in malloc/hot-functions.txt

.PHONY: verify verify-miri verify-tsan verify-asan verify-valgrind verify-loom \
        verify-hot-functions

verify: verify-miri verify-tsan verify-asan verify-valgrind verify-loom verify-hot-functions

verify-miri:
	scripts/verify-miri.sh

verify-tsan:
	scripts/verify-tsan.sh

verify-asan:
	scripts/verify-asan.sh

verify-valgrind:
	scripts/verify-valgrind.sh

# make test runs every loom model at its default bound; this runs the
# three-thread taker/putter/flusher model far deeper (minutes).
verify-loom:
	LOOM_MAX_PREEMPTIONS=40 RUSTFLAGS="--cfg loom" $(CARGO) test --release --lib \
	  --target-dir target/loom loom_taker_putter_flusher -- --nocapture

verify-hot-functions: lib
	scripts/hot-functions.sh --check $(MALLOC_SO)
