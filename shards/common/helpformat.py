"""The ``--help`` layout of every command line: the module docstring as written, and each option's
default where it says something (not None or False, and not already in the option's help)."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ''
        default = action.default
        if ('default' in text or default is None or default is False or default == argparse.SUPPRESS
                or not action.option_strings
                or action.nargs == 0):
            return text
        return f'{text} (default: {default})'


def command_name(module: str) -> str:
    """How the user ran the command, for its usage line: an installed script (``replk-shards``)
    by its name, a module or script file as ``python -m module``."""
    import os
    import sys
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ''
    return invoked if invoked and not invoked.endswith('.py') and invoked != '-c' else f'python -m {module}'
