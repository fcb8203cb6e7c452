#!/usr/bin/env bash
# Prints the path of Debian's libjemalloc.so.2 for this machine's multiarch.
echo "/usr/lib/$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)/libjemalloc.so.2"
