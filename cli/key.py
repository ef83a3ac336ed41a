"""`colonies key generate`: a fresh identity (private key and id), made locally."""

from __future__ import annotations

import typer

from colonies_es.cli.common import JsonOption, print_json
from colonies_es.crypto import id_from_private_key, new_private_key

__all__ = ["key_app"]

key_app = typer.Typer(help="Keys: the identities that sign every command.", no_args_is_help=True)


@key_app.command()
def generate(json_output: JsonOption = False) -> None:
    """Generate a private key (secp256k1, 64 hex characters) and print it with its id.

    Nothing is sent anywhere: register the id as a colony, executor or user to use the key.
    """
    prvkey = new_private_key()
    identity = id_from_private_key(prvkey)
    if json_output:
        print_json({"prvkey": prvkey, "id": identity})
    else:
        typer.echo(f"Private key: {prvkey}\nId:          {identity}")
