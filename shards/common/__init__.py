"""What every layer (shards, labeling, pretrain) shares and none of them owns: the exception base
for what a user can fix (``errors``), the launcher's environment (``launcher``), atomic durable
local writes (``local_files``), files and names from outside treated as data (``safe_files``), the
tasks file's format (``tasks_file``) and the command lines' help format (``helpformat``). Light:
the standard library, plus torch only where a file is loaded."""
