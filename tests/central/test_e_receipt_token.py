"""The e-receipt token: minted by the till offline, read by central; unguessable, and silent about the sale's id."""

from __future__ import annotations

import base64
import subprocess
import sys
import uuid

import pytest

from agent.ids import new_transaction_id
from central.e_receipt_token import TOKEN_LENGTH, mint_token, read_token

KEY = b"test-phone-hash-key-0123456789"


def test_a_token_names_its_sale_and_only_with_the_key_it_was_made_with():
    sale = new_transaction_id()
    token = mint_token(KEY, sale)
    assert len(token) == TOKEN_LENGTH == 32 and token.isascii() and "=" not in token
    assert read_token(KEY, token) == (sale, True)
    assert mint_token(KEY, sale) == token  # a reprint carries the QR code the customer already has
    assert not read_token(b"another-phone-hash-key-0123", token).genuine


def test_a_token_does_not_show_the_sale_s_id_or_its_time():
    sales = [new_transaction_id() for _ in range(50)]
    tokens = [mint_token(KEY, sale) for sale in sales]
    for sale, token in zip(sales, tokens, strict=True):
        raw = base64.urlsafe_b64decode(token)
        assert uuid.UUID(sale).bytes not in raw and uuid.UUID(sale).bytes[:6] not in raw  # not the id, nor its time
        assert sale.replace("-", "")[:8] not in token.lower()
    # Ids made one after the other share their leading (time) bytes; their tokens share no prefix beyond chance.
    assert len({token[:4] for token in tokens}) > 45


def test_every_altered_character_makes_a_token_forged():
    sale = new_transaction_id()
    token = mint_token(KEY, sale)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for i, char in enumerate(token):
        changed = alphabet[(alphabet.index(char) + 1) % 64]
        assert not read_token(KEY, token[:i] + changed + token[i + 1 :]).genuine, i


@pytest.mark.parametrize(
    "token",
    ["", "x", "A" * 31, "A" * 33, "A" * 32, "A" * 30 + "==", "Ä" * 32, "A" * 10_000, "../../etc/passwd", "A+/" * 11],
)
def test_a_malformed_or_made_up_token_is_forged_and_still_yields_a_candidate(token):
    """A candidate id comes back whatever the input, so central looks it up either way (the same work)."""
    read = read_token(KEY, token)
    assert not read.genuine and uuid.UUID(read.transaction_id)


def test_a_transaction_id_that_is_not_a_uuid_is_refused_at_mint():
    with pytest.raises(ValueError):
        mint_token(KEY, "T01-20261123-0042")
    with pytest.raises(ValueError):
        mint_token(b"", new_transaction_id())


def test_the_token_module_is_pure_so_the_till_can_import_it():
    code = (
        "import sys, central.e_receipt_token; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('fastapi', 'starlette', 'sqlalchemy', 'sqlmodel', 'httpx', 'agent', 'pydantic') "
        "or (m.startswith('central.') and m != 'central.e_receipt_token')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
