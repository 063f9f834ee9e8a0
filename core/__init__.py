"""ELT Studio core library: looped transformer, tokenizers, MaskGIT sampling, ILSD training,
per-loop evaluation, checkpoints and runtimes.  Importing it has no side effects."""
