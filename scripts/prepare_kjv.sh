#!/usr/bin/env bash
# Prepares the King James Bible corpus for the GPT configs (docs/gpt.md, "Prepare the corpus"):
#   scripts/prepare_kjv.sh [--vocab-size N] [--build-dir DIR]
# writes, under data/kjv/ (git-ignored):
#   kjv.txt                     the text from Debian's bible-kjv, one verse a line, references stripped
#   bpe<N>.tok, bpe/            a byte-level BPE tokenizer (default N = 4096) and its token shards
#   char.tok, char/             the byte ("char") tokenizer, 256 tokens, and its token shards
# The shards are train_000000.bin ... and val_000000.bin (the last 5% of the text, cut at a line).
# It uses an existing build's kiln binary (default build/; scripts/build.sh makes one).
set -euo pipefail
cd "$(dirname "$0")/.."

vocab_size=4096
build_dir=build
while [[ $# -gt 0 ]]; do
  case "$1" in
    --vocab-size) vocab_size="$2"; shift 2 ;;
    --build-dir) build_dir="$2"; shift 2 ;;
    *) echo "usage: $0 [--vocab-size N] [--build-dir DIR]" >&2; exit 2 ;;
  esac
done

kiln="$build_dir/kiln"
if [[ ! -x "$kiln" ]]; then
  echo "error: $kiln not found; build kiln first (scripts/build.sh) or pass --build-dir" >&2
  exit 1
fi
if ! command -v bible >/dev/null; then
  echo "error: the 'bible' program is missing; install Debian's bible-kjv (scripts/setup.sh does)" >&2
  exit 1
fi

out=data/kjv
mkdir -p "$out"

# `bible -f` prints one verse a line as "Ge1:1 In the beginning ..." (book, chapter:verse, a
# space); the reference is stripped so the model sees only the text.
bible -f "Gen1:1-Rev22:21" | sed -E 's/^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ //' > "$out/kjv.txt"
if grep -qE '^[1-3]?[A-Za-z]+[0-9]+:[0-9]+ ' "$out/kjv.txt"; then
  echo "error: verse references left in $out/kjv.txt; has bible's output format changed?" >&2
  exit 1
fi
echo "== $out/kjv.txt: $(wc -l < "$out/kjv.txt") verses, $(wc -c < "$out/kjv.txt") bytes"

echo "== BPE tokenizer, vocab $vocab_size"
"$kiln" tokenizer train --input "$out/kjv.txt" --vocab-size "$vocab_size" --output "$out/bpe$vocab_size.tok"
"$kiln" tokenize --tokenizer "$out/bpe$vocab_size.tok" --input "$out/kjv.txt" --output-dir "$out/bpe"

echo "== byte (char) tokenizer, vocab 256"
"$kiln" tokenizer train --input "$out/kjv.txt" --vocab-size 256 --output "$out/char.tok"
"$kiln" tokenize --tokenizer "$out/char.tok" --input "$out/kjv.txt" --output-dir "$out/char"

echo "== made:"
ls -l "$out"/*.txt "$out"/*.tok "$out"/bpe/*.bin "$out"/char/*.bin
