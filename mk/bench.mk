# Benchmarks (issue #5): the harness bench/bench.c built against the glibc
# shared library and the musl static archive, run by bench/run.py.
#   make bench        quick subset (under 3 minutes on 2 cores)
#   make bench-full   every workload, size (64 B..2 MiB) and thread count (1..16)
# Results: results/{quick,full}.md, .csv (medians), -raw.csv; the plot goes to
# target/bench/{quick,full}.png (bench/run.py --replot results/quick-raw.csv).

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

bench-bin: bench-deps $(BENCH_OUT)/bench-glibc $(BENCH_OUT)/bench-musl

bench: bench-bin
	python3 bench/run.py --quick $(BENCH_ARGS)

bench-full: bench-bin
	python3 bench/run.py --full $(BENCH_ARGS)
