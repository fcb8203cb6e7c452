# Benchmarks (issue #5): the harness bench/bench.c built against the glibc
# shared library and the musl static archive, run by bench/run.py.
#   make bench        quick subset (under 3 minutes on 2 cores)
#   make bench-full   every workload, size (64 B..2 MiB) and thread count (1..16)
# Results: results/{quick,full}.md, .csv (medians), -raw.csv; the plot goes to
# target/bench/{quick,full}.png (bench/run.py --replot results/quick-raw.csv).
# The seed's table (issue #20) also runs bench-musl-counters: the same harness
# over a musl library built with --cfg pools_counters, which prints the
# shared cache's event counts at exit (src/counters.rs).

BENCH_OUT := target/bench

.PHONY: bench bench-full bench-bin bench-deps

bench-deps: deps
	@bench/ensure-deps.sh

$(BENCH_OUT)/bench-glibc: bench/bench.c include/pools.h lib
	@mkdir -p $(BENCH_OUT)
	$(CC) $(CFLAGS) bench/bench.c -o $@ -L$(REL) -lpools -Wl,-rpath,$(CURDIR)/$(REL)

$(BENCH_OUT)/bench-musl: bench/bench.c include/pools.h musl
	@mkdir -p $(BENCH_OUT)
	$(MUSL_CC) -static $(CFLAGS) bench/bench.c -Ltarget/musl -lpools -o $@

# The counted library: its own target directory, so that the flag does not
# rebuild the plain one.
COUNT_DIR := target/counters
COUNT_LIB := $(COUNT_DIR)/musl/libpools.a

.PHONY: musl-counters
musl-counters: deps
	RUSTFLAGS="--cfg pools_counters" $(CARGO) rustc --release --lib --target $(MUSL_TGT) \
	  --target-dir $(COUNT_DIR) --crate-type staticlib
	@mkdir -p $(COUNT_DIR)/musl
	@scripts/merge-archives.sh $(COUNT_LIB) $(COUNT_DIR)/$(MUSL_TGT)/release/libpools.a \
	  "$$(rustc --print sysroot)/lib/rustlib/$(MUSL_TGT)/lib/self-contained/libunwind.a"

$(BENCH_OUT)/bench-musl-counters: bench/bench.c include/pools.h musl-counters
	@mkdir -p $(BENCH_OUT)
	$(MUSL_CC) -static $(CFLAGS) bench/bench.c -L$(COUNT_DIR)/musl -lpools -o $@

bench-bin: bench-deps $(BENCH_OUT)/bench-glibc $(BENCH_OUT)/bench-musl \
  $(BENCH_OUT)/bench-musl-counters

bench: bench-bin
	python3 bench/run.py --quick $(BENCH_ARGS)

bench-full: bench-bin
	python3 bench/run.py --full $(BENCH_ARGS)

# The counting build is not the one tests run: lint keeps it compiling.
.PHONY: lint-counters
lint: lint-counters
lint-counters:
	RUSTFLAGS="--cfg pools_counters" $(CARGO) clippy --release --lib --target-dir $(COUNT_DIR) -- -D warnings

# Instructions per pool_alloc / pool_free on the cache-hit path (callgrind).
.PHONY: bench-instructions
bench-instructions: lib
	bench/hit-callgrind.sh
