"""murmur2 and the key partitioner must match Kafka's Java client byte for byte."""

from __future__ import annotations

import pytest

from streamflow.transport.partitioner import murmur2, partition_for


def signed32(x: int) -> int:
    return x - (1 << 32) if x >= 1 << 31 else x


# Kafka clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java, testMurmur2
KAFKA_UTILS_TEST = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (bytes([ord("a"), ord("b"), ord("c")]), 479470107),
]

# librdkafka src/rdmurmur2.c unittest (its murmur2 is Kafka's; values as unsigned hex)
LIBRDKAFKA = [
    (b"kafka", 0xD067CF64),
    (b"giberish123456789", 0x8F552B0C),
    (b"1234", 0x9FC97B14),
    (b"234", 0xE7C009CA),
    (b"34", 0x873930DA),
    (b"4", 0x5A4B5CA1),
    (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x78424F1C),
    (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4A62B377),
    (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xE0E4E09E),
    (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62B8B43F),
    (b"", 0x106E08D9),
]


@pytest.mark.parametrize(("data", "expected"), KAFKA_UTILS_TEST)
def test_murmur2_matches_kafka_utils_test(data: bytes, expected: int) -> None:
    assert signed32(murmur2(data)) == expected


@pytest.mark.parametrize(("data", "expected"), LIBRDKAFKA)
def test_murmur2_matches_librdkafka(data: bytes, expected: int) -> None:
    assert murmur2(data) == expected


def test_murmur2_is_an_unsigned_32_bit_int() -> None:
    for data in [b"", b"\x00", b"\xff" * 9, bytes(range(256))]:
        h = murmur2(data)
        assert 0 <= h < 1 << 32
    # every tail length (0..3 leftover bytes) contributes: no two prefixes collide here
    prefixes = {murmur2(b"streamflow"[:n]) for n in range(11)}
    assert len(prefixes) == 11


def test_murmur2_uses_every_byte_including_high_ones() -> None:
    # Java bytes are signed; the hash must treat 0x80..0xff as their unsigned value
    assert murmur2(b"\x80") != murmur2(b"\x00")
    assert murmur2(b"ab\xffc") != murmur2(b"ab\x7fc")


@pytest.mark.parametrize(("data", "signed"), KAFKA_UTILS_TEST)
@pytest.mark.parametrize("partitions", [1, 2, 3, 6, 12, 100])
def test_partition_for_is_java_to_positive_mod_n(data: bytes, signed: int, partitions: int) -> None:
    # Utils.toPositive(murmur2(key)) % numPartitions, computed from Kafka's own hash value
    expected = (signed & 0x7FFFFFFF) % partitions
    assert partition_for(data, partitions) == expected
    assert 0 <= partition_for(data, partitions) < partitions


def test_partition_for_negative_hash_is_made_positive_not_abs() -> None:
    # -790332482: abs() would give 790332482 % 10 == 2; toPositive gives 1357151166 % 10 == 6
    assert partition_for(b"foobar", 10) == 6
    # murmur2("kafka") == -798503068: abs() % 1000 would be 68, toPositive gives 580
    assert partition_for(b"kafka", 1000) == 580


def test_partition_for_spreads_keys() -> None:
    counts = [0] * 6
    for i in range(6000):
        counts[partition_for(f"customer-{i}".encode(), 6)] += 1
    assert min(counts) > 800  # roughly uniform (1000 each)
