import numpy as np
import pytest

from domains.dna.alphabet import BasePolicy, DNAInputError, normalize, reverse_complement
from domains.dna.tokenizers import (
    SPECIALS,
    KmerTokenizer,
    SingleNucleotideTokenizer,
    build_tokenizer,
    tokenizer_from_dict,
)


def _random_seqs(n, length, seed=0, alphabet="ACGT"):
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(alphabet.encode(), np.uint8)
    return [rng.choice(letters, length).tobytes().decode() for _ in range(n)]


def test_single_nucleotide_ids_match_core_vocab():
    tok = SingleNucleotideTokenizer()
    vocab = tok.vocab()
    assert vocab.tokens == tok.tokens
    ids = tok.encode("ACGTN")
    assert vocab.decode(ids.tolist()) == list("ACGTN")
    assert tok.tokens[: len(SPECIALS)] == SPECIALS


def test_reverse_complement_is_exact_token_map():
    tok = SingleNucleotideTokenizer()
    for seq in _random_seqs(20, 137, alphabet="ACGTN"):
        ids = tok.encode(seq)
        assert np.array_equal(tok.reverse_complement_ids(ids), tok.encode(reverse_complement(seq)))
        assert np.array_equal(tok.reverse_complement_ids(tok.reverse_complement_ids(ids)), ids)
    assert tok.decode(tok.reverse_complement_ids(tok.encode("AACGTN"))) == "NACGTT"


def test_kmer_non_overlapping_with_tail_and_n():
    tok = KmerTokenizer(3)
    ids = tok.encode("ACGTNAACGTA")  # ACG | TNA | ACG | TA
    assert len(ids) == 5
    assert tok.tokens[ids[0]] == "ACG" and ids[2] == ids[0]
    assert ids[1] == 5  # k-mer with N -> <unk>
    assert [tok.tokens[i] for i in ids[3:]] == ["T", "A"]
    assert tok.decode(ids) == "ACGNNNACGTA"
    assert tok.vocab().tokens == tok.tokens
    with pytest.raises(ValueError):
        KmerTokenizer(1)


def test_kmer_roundtrip_on_acgt():
    tok = KmerTokenizer(6)
    for seq in _random_seqs(10, 101, seed=3):
        assert tok.decode(tok.encode(seq)) == seq


def test_bpe_train_roundtrip_and_serialisation():
    # Repeated motifs so merges have something to learn.
    seqs = [s[:40] + "TATAAAAGGCGC" * 3 + s[40:] for s in _random_seqs(200, 120, seed=1)]
    tok = build_tokenizer("bpe", vocab_size=200, train_sequences=seqs)
    assert tok.vocab_size == 200
    assert tok.tokens[: len(SPECIALS)] == SPECIALS
    assert any(t in tok.tokens for t in ("TATAAAAG", "GGCGC", "TATAAAAGGCGC"))
    ids = tok.encode(seqs[0])
    assert len(ids) < len(seqs[0]) / 2  # merges compress
    assert tok.decode(ids) == seqs[0]
    again = tokenizer_from_dict(tok.to_dict())
    assert np.array_equal(again.encode(seqs[5]), tok.encode(seqs[5]))
    assert tok.vocab().tokens == tok.tokens
    with pytest.raises(ValueError, match="train_sequences"):
        build_tokenizer("bpe")


def test_policy_maps_or_rejects_naming_record():
    assert normalize("acgRYn") == "ACGNNN"
    assert normalize("acgt", BasePolicy(lowercase="n")) == "NNNN"
    strict = SingleNucleotideTokenizer(BasePolicy(ambiguous="reject", lowercase="reject"))
    with pytest.raises(DNAInputError, match=r"x\.fa record 'r7'.*IUPAC.*'R' at position 2"):
        strict.encode("ACRT", where="x.fa record 'r7'")
    with pytest.raises(DNAInputError, match="lowercase"):
        strict.encode("ACgT", where="x.fa record 'r7'")
    with pytest.raises(DNAInputError, match="non-DNA character '-'"):
        SingleNucleotideTokenizer().encode("AC-T", where="x.fa record 'r7'")
    with pytest.raises(ValueError):
        BasePolicy(ambiguous="drop")


def test_kmer_batch_equals_single_encoding():
    tok = KmerTokenizer(4)
    seqs = _random_seqs(6, 30, seed=5, alphabet="ACGTN") + _random_seqs(3, 17, seed=6) + [""]
    for got, seq in zip(tok.encode_batch(seqs), seqs):
        assert np.array_equal(got, tok.encode(seq))
    with pytest.raises(DNAInputError, match="sequence #1"):
        tok.encode_batch(["ACGTACGT", "ACGT-CGT"])


def test_kmer_reverse_complement_is_lossless_around_n():
    from domains.dna.alphabet import reverse_complement
    from domains.dna.tokenizers import KmerTokenizer

    tok = KmerTokenizer(3)
    seq = "ACGTNACGTTG"
    (rc,) = tok.encode_rc_batch([seq])
    assert tok.decode(rc) == "CAACGTNNNGT"  # the k-mer NAC is <unk>; CGT is kept
    assert (rc == tok.encode(reverse_complement(seq))).all()
    lossy = tok.reverse_complement_ids(tok.encode(seq))  # via <unk> -> NNN: bases lost
    assert not (lossy == rc).all()


def test_non_latin1_character_is_a_named_error():
    from domains.dna.alphabet import DNAInputError
    from domains.dna.tokenizers import KmerTokenizer, SingleNucleotideTokenizer

    for tok in (SingleNucleotideTokenizer(), KmerTokenizer(3)):
        with pytest.raises(DNAInputError, match="--prompt: non-DNA character '\u0394'"):
            tok.encode("AC\u0394GT", "--prompt")
        with pytest.raises(DNAInputError, match="sequence #1"):
            tok.encode_batch(["ACGTAC", "AC\u0394GTA"])
