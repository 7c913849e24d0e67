"""What every layer (shards, labeling, pretrain) shares and none of them owns: the launcher's
environment today. Imports only the standard library."""
