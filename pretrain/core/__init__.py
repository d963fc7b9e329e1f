"""What the trainer (``pretrain``) and the corpus pipeline share; this package imports neither of them.

* ``errors``: the user-facing exceptions (one clear line, exit code 2);
* ``atomic``: the one atomic, durable file write;
* ``indexed`` + ``manifest``: the token-shard format (Megatron ``.bin``/``.idx``) and the folder manifest;
* ``tokenizer``: training, loading and saving the tokenizers of the three families;
* ``safe_load``: torch files loaded weights-only through an allow-list, so no file we read runs code.
"""
