"""Tickets (SFA's GetTicket): the aggregate's signed promise of the time slots it booked for a slice.

A ticket is a signed-credential document of type ``ticket``, signed by the aggregate's key (its GID chain in
KeyInfo, so anyone trusting our authority can check it, with sfa-omf or xmlsec1). It names the owner (the caller),
the slice, when the promise ends (the allocation's expiry: the slots are held until then and must be provisioned
before), and carries the booked slots as a manifest RSpec.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import rsa
from lxml import etree

from sfa_omf.times import format_time
from sfa_omf.trust.credential import XML_ID, new_document_root, sign_document
from sfa_omf.trust.gid import GidChain, chain_pem


@dataclass(frozen=True)
class TicketSlot:
    lease_id: str
    component_id: str
    sliver_urn: str
    start: datetime
    end: datetime


def issue_ticket(
    owner_chain: GidChain,
    slice_urn: str,
    expires: datetime,
    slots: Sequence[TicketSlot],
    manifest: str,
    key: rsa.RSAPrivateKey,
    signer_chain: GidChain,
) -> str:
    """The signed ticket document."""
    root = new_document_root()
    credential = etree.SubElement(root, "credential")
    credential.set(XML_ID, "ref0")
    fields = {
        "type": "ticket",
        "serial": "",
        "owner_gid": chain_pem(owner_chain),
        "owner_urn": owner_chain[0].urn or "",
        "target_urn": slice_urn,
        "uuid": "",
        "expires": format_time(expires),
    }
    for tag, text in fields.items():
        etree.SubElement(credential, tag).text = text
    ticket = etree.SubElement(credential, "ticket")
    for slot in slots:
        etree.SubElement(
            ticket,
            "slot",
            lease_id=slot.lease_id,
            component_id=slot.component_id,
            sliver_urn=slot.sliver_urn,
            start=format_time(slot.start),
            end=format_time(slot.end),
        )
    etree.SubElement(ticket, "rspec").text = manifest
    return sign_document(root, "ref0", key, signer_chain)
