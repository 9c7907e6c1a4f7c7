"""Upper-layer details other peers rarely exercise, sent by hand: a command
split over several PDVs and PDUs, several PDVs in one PDU, C-ECHO message IDs."""

import struct

import pydicom

from nodetest import dataset_bytes
from rawdicom import (
    CR_STORAGE,
    RawAssociation,
    VERIFICATION,
    c_store_rq,
    pdata,
    status_of,
)

IMPLICIT = "1.2.840.10008.1.2"
EXPLICIT = "1.2.840.10008.1.2.1"  # RG1_UNCI is explicit VR, despite its name


def test_command_split_over_several_pdvs_and_pdus(node, rg1_copies):
    (path,) = rg1_copies("UNCI", 1)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    data = dataset_bytes(path)
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(1, CR_STORAGE, [EXPLICIT])])
    command = c_store_rq(77, CR_STORAGE, uid)
    # Three command fragments: two in separate PDUs, the last sharing a PDU
    # with the first data fragment.
    raw.send(pdata(1, True, False, command[:10]))
    raw.send(pdata(1, True, False, command[10:30]))
    last_cmd = pdata(1, True, True, command[30:])
    first_data = pdata(1, False, False, data[:1000])
    body = last_cmd[6:] + first_data[6:]
    raw.send(struct.pack(">BxI", 0x04, len(body)) + body)
    rest = data[1000:]
    for i in range(0, len(rest), 16000):
        raw.send(pdata(1, False, i + 16000 >= len(rest), rest[i : i + 16000]))
    rsp = raw.read_command()
    assert status_of(rsp) == 0x0000
    assert struct.unpack("<H", rsp[0x0120])[0] == 77
    raw.close()
    stored = node.stored_path(pydicom.dcmread(path, stop_before_pixels=True))
    assert dataset_bytes(stored) == data, "the data set is stored byte for byte as sent"


def test_echo_answers_each_message_id(node):
    raw = RawAssociation(node.port)
    raw.associate(node.ae_title, [(3, VERIFICATION, [IMPLICIT])])
    for message_id in (1, 2, 65535):
        body = (
            struct.pack("<HHI", 0, 0x0002, 18) + VERIFICATION.encode() + b"\0"
            + struct.pack("<HHIH", 0, 0x0100, 2, 0x0030)
            + struct.pack("<HHIH", 0, 0x0110, 2, message_id)
            + struct.pack("<HHIH", 0, 0x0800, 2, 0x0101)
        )
        command = struct.pack("<HHII", 0, 0, 4, len(body)) + body
        raw.send(pdata(3, True, True, command))
        rsp = raw.read_command()
        assert struct.unpack("<H", rsp[0x0100])[0] == 0x8030
        assert struct.unpack("<H", rsp[0x0120])[0] == message_id
        assert status_of(rsp) == 0x0000
    raw.close()
