"""Hand-built PDUs, to send what no well-behaved library would."""

import socket
import struct

APP_CONTEXT = b"1.2.840.10008.3.1.1.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
EXPLICIT_LE = "1.2.840.10008.1.2.1"
CR_STORAGE = "1.2.840.10008.5.1.4.1.1.1"
VERIFICATION = "1.2.840.10008.1.1"


def _item(item_type: int, payload: bytes) -> bytes:
    return struct.pack(">BxH", item_type, len(payload)) + payload


def _uid(value: str) -> bytes:
    return value.encode()


def associate_rq(called: str, calling: str, contexts, max_pdu: int = 16384) -> bytes:
    """contexts: [(id, abstract_syntax, [transfer_syntaxes])]"""
    body = struct.pack(">HH", 1, 0) + called.ljust(16).encode() + calling.ljust(16).encode() + bytes(32)
    body += _item(0x10, APP_CONTEXT)
    for pc_id, abstract, syntaxes in contexts:
        sub = _item(0x30, _uid(abstract)) + b"".join(_item(0x40, _uid(ts)) for ts in syntaxes)
        body += _item(0x20, struct.pack(">BxBx", pc_id, 0) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4")
    body += _item(0x50, user)
    return struct.pack(">BxI", 0x01, len(body)) + body


def _items(data: bytes):
    """(type, payload) of each item in `data`."""
    while data:
        item_type, length = data[0], struct.unpack(">H", data[2:4])[0]
        yield item_type, data[4 : 4 + length]
        data = data[4 + length :]


def associate_ac(rq_body: bytes, max_pdu: int = 16384, syntax: str = None) -> bytes:
    """The A-ASSOCIATE-AC accepting every context of an A-ASSOCIATE-RQ
    (its body) in the first transfer syntax proposed, or in `syntax`
    whether proposed or not."""
    body = rq_body[:68]  # protocol version, reserved, AE titles, reserved: echoed
    body += _item(0x10, APP_CONTEXT)
    for item_type, payload in _items(rq_body[68:]):
        if item_type != 0x20:
            continue
        syntaxes = [sub for t, sub in _items(payload[4:]) if t == 0x40]
        chosen = _uid(syntax) if syntax else syntaxes[0]
        body += _item(0x21, struct.pack(">BxBx", payload[0], 0) + _item(0x40, chosen))
    body += _item(0x50, _item(0x51, struct.pack(">I", max_pdu)) + _item(0x52, b"1.2.3.4"))
    return struct.pack(">BxI", 0x02, len(body)) + body


def pdata(pc_id: int, is_command: bool, is_last: bool, data: bytes) -> bytes:
    pdv = struct.pack(">IBB", len(data) + 2, pc_id, int(is_command) | (int(is_last) << 1)) + data
    return struct.pack(">BxI", 0x04, len(pdv)) + pdv


ABORT = struct.pack(">BxI", 0x07, 4) + bytes(4)
RELEASE_RQ = struct.pack(">BxI", 0x05, 4) + bytes(4)


def _element(element: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHI", 0, element, len(value)) + value


def u16(value: int) -> bytes:
    return struct.pack("<H", value)


def command_set(*elements) -> bytes:
    """A command set (group 0000, implicit VR) of (element, value bytes),
    group length first."""
    body = b"".join(_element(element, value) for element, value in elements)
    return _element(0x0000, struct.pack("<I", len(body))) + body


def c_store_rq(message_id: int, sop_class: str, sop_instance: str) -> bytes:
    return command_set(
        (0x0002, sop_class.encode()),
        (0x0100, u16(0x0001)),
        (0x0110, u16(message_id)),
        (0x0700, u16(0)),
        (0x0800, u16(0)),
        (0x1000, sop_instance.encode()),
    )


def parse_command(data: bytes) -> dict:
    out, pos = {}, 0
    while pos < len(data):
        _, element, length = struct.unpack_from("<HHI", data, pos)
        out[element] = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
    return out


class RawAssociation:
    def __init__(self, port: int, timeout: float = 10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        return buf

    def read_pdu(self):
        header = self.recv_exact(6)
        pdu_type, length = header[0], struct.unpack(">I", header[2:])[0]
        return pdu_type, self.recv_exact(length)

    def associate(self, called: str, contexts, max_pdu: int = 16384) -> bytes:
        self.send(associate_rq(called, "RAWSCU", contexts, max_pdu))
        pdu_type, body = self.read_pdu()
        assert pdu_type == 0x02, f"expected A-ASSOCIATE-AC, got {pdu_type:#x}"
        return body

    def read_command(self) -> dict:
        pdu_type, body = self.read_pdu()
        assert pdu_type == 0x04, f"expected P-DATA-TF, got {pdu_type:#x}"
        return parse_command(body[6:])

    def closed_by_peer(self, timeout: float) -> bool:
        """True once the peer has closed the connection (after any A-ABORT)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self) -> None:
        self.sock.close()


def associate_answer(port: int, called: str, calling: str, contexts=None):
    """Sends an A-ASSOCIATE-RQ and returns (PDU type, body) of the answer."""
    raw = RawAssociation(port)
    try:
        raw.send(associate_rq(called, calling, contexts or [(1, VERIFICATION, [IMPLICIT_LE])]))
        return raw.read_pdu()
    finally:
        raw.close()


def rejection(port: int, called: str, calling: str):
    """(result, source, reason) of the A-ASSOCIATE-RJ the peer answers, or
    None if it accepted."""
    pdu_type, body = associate_answer(port, called, calling)
    if pdu_type != 0x03:
        return None
    return body[1], body[2], body[3]


def status_of(command: dict) -> int:
    return struct.unpack("<H", command[0x0900])[0]
