"""What every layer (shards, labeling, pretrain) shares and none of them owns: the launcher's
environment and atomic, durable local writes (``local_files``). Imports only the standard library."""
