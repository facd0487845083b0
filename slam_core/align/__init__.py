"""Word alignments of speech segments: which transcript word is spoken when (the input of speech-text interleaving).

`words` holds the source-independent part (matching transcript words to timed words, the WORD_ALIGNMENTS shard
writer, the share of words aligned); `sources` reads timed words from synthesis shards (espeak / Kokoro timings in
`aligned_text`) and from Whisper's word timestamps for real speech.
"""
