"""``acexport completion bash|zsh``: a completion script, generated from the parser.

Commands, each command's options, an option's choices (``--type event``), and
file names after the options that take a path. zsh runs the bash function through
``bashcompinit``. Install: ``acexport completion bash > /etc/bash_completion.d/acexport``
(or ``source <(acexport completion bash)`` in ``~/.bashrc``).
"""

from __future__ import annotations

import argparse
import shlex

# Options whose value is a file or directory: completed with file names.
_PATHS = {"--config", "--output", "--token-file", "--storage-dir", "--dir"}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script for ``shell`` (bash or zsh) of ``parser``'s commands."""
    commands = _commands(parser)
    cases = "".join(
        f"        {shlex.quote(name)}) opts={shlex.quote(' '.join(_options(sub)))};;\n"
        for name, sub in commands.items()
    )
    # An option's choices, per command: export's --format is not the emulator's.
    choice_cases = "".join(
        f"        {name}:{option}) COMPREPLY=($(compgen -W "
        f'{shlex.quote(" ".join(map(str, action.choices)))} -- "$cur")); return;;\n'
        for name, sub in commands.items()
        for action in sub._actions
        if action.choices and action.option_strings
        for option in action.option_strings
    )
    paths = "|".join(f"*:{option}" for option in sorted(_PATHS))
    first = shlex.quote(" ".join([*commands, "--help", "--version"]))
    body = f"""_acexport() {{
    local cur prev opts
    cur="${{COMP_WORDS[COMP_CWORD]}}"
    prev="${{COMP_WORDS[COMP_CWORD-1]}}"
    if [ "$COMP_CWORD" -eq 1 ]; then
        COMPREPLY=($(compgen -W {first} -- "$cur"))
        return
    fi
    case "${{COMP_WORDS[1]}}:$prev" in
{choice_cases}        {paths}) COMPREPLY=($(compgen -f -- "$cur")); return;;
    esac
    case "${{COMP_WORDS[1]}}" in
{cases}        *) opts="--help";;
    esac
    COMPREPLY=($(compgen -W "$opts" -- "$cur"))
}}
complete -o default -F _acexport acexport
"""
    if shell == "zsh":
        return "autoload -U +X bashcompinit && bashcompinit\n" + body
    return body


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(option for action in parser._actions for option in action.option_strings)
