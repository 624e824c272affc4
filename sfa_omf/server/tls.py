"""TLS for the XML-RPC servers: ask every client for a certificate, accept any chain at the handshake, and hand
the chain to the application, which verifies it against the trusted roots (federated chains are judged there, with
a clear answer, not by the TLS library with a bare alert).

The server presents its own GID chain. Clients (sfi.py, omni) do not verify it.
"""

from __future__ import annotations

from typing import Any

from OpenSSL import SSL, crypto
from twisted.internet.ssl import ContextFactory

from sfa_omf.trust.gid import GidChain, gid_from_der, load_gid_chain_file


def _accept_any_chain(_connection: Any, _certificate: Any, _errno: int, _depth: int, _ok: int) -> bool:
    return True  # the application verifies the chain against trusted_roots; see peer_chain()


class ServerTls(ContextFactory):
    """A pyOpenSSL context with our key and GID chain that asks for, but does not judge, a client certificate.

    ``require_client_certificate`` False lets browsers without one in (the web calendar's public view); the
    XML-RPC endpoints then refuse such callers themselves (server/xmlrpc.py).
    """

    def __init__(self, key_path: str, chain_path: str, require_client_certificate: bool = True) -> None:
        self.chain = load_gid_chain_file(chain_path)
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.use_privatekey_file(key_path)
        context.use_certificate(self.chain[0].certificate)
        for parent in self.chain[1:]:
            context.add_extra_chain_cert(parent.certificate)
        context.check_privatekey()
        mode = SSL.VERIFY_PEER | (SSL.VERIFY_FAIL_IF_NO_PEER_CERT if require_client_certificate else 0)
        context.set_verify(mode, _accept_any_chain)
        # The client's certificate is the one of the handshake for the whole connection (server/xmlrpc.py reads it
        # once per connection): no renegotiation, which could change it (TLS 1.3 has none anyway).
        context.set_options(SSL.OP_NO_RENEGOTIATION)
        # Session ids need a context id when client certificates are requested.
        context.set_session_id(b"sfa-omf")
        self._context = context

    def getContext(self) -> SSL.Context:
        return self._context


def peer_chain(connection: SSL.Connection) -> GidChain:
    """The client's certificate chain, leaf first, as plain GIDs.

    On the server side pyOpenSSL's get_peer_cert_chain() may omit the leaf, so the leaf comes from
    get_peer_certificate() and the rest from the chain, without repeating the leaf. Each distinct certificate is
    parsed into a GID once (by its exact DER bytes): a kept-alive client sends the same chain with every call.
    """
    leaf = connection.get_peer_certificate()
    if leaf is None:
        return ()
    chain: list[bytes] = [crypto.dump_certificate(crypto.FILETYPE_ASN1, leaf)]
    for certificate in connection.get_peer_cert_chain() or []:
        der = crypto.dump_certificate(crypto.FILETYPE_ASN1, certificate)
        if der not in chain:
            chain.append(der)
    return tuple(gid_from_der(der) for der in chain)
