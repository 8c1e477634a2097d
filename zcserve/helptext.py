"""The help formatter every command shares: defaults that say something."""

from __future__ import annotations

import argparse


class DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only when it says something: never "None" or "[]", never twice
    when the help text states it already; a flag says "on" or "off" in words."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        help_text = action.help or ""
        default = action.default
        if default is None or default is argparse.SUPPRESS or default == []:
            return help_text
        if "default" in help_text:
            return help_text
        if default is True:
            return help_text + " (default: on)"
        if default is False:
            return help_text + " (default: off)"
        return super()._get_help_string(action)
