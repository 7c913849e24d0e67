"""The ``--help`` layout of every command line: the module docstring as written, and each option's default."""
import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    pass
