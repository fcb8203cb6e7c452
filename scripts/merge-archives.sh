#!/usr/bin/env bash
# merge-archives.sh OUT IN...: one static archive holding every member of
# the inputs. binutils' LTO plugin cannot read the LLVM bitcode that Rust's
# std embeds and says so for each such member; that note is dropped, any
# other message and ar's exit status are kept.
set -euo pipefail
out=$1; shift
rm -f "$out"
{
    echo "create $out"
    for a in "$@"; do echo "addlib $a"; done
    echo save
    echo end
} | ar -M 2>&1 | { grep -v 'LLVM gold plugin has failed to create LTO module' >&2 || true; }
exit "${PIPESTATUS[1]}"
