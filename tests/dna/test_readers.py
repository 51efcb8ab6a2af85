import gzip

import pytest

from domains.dna.alphabet import BasePolicy, DNAInputError
from domains.dna.readers import ReadReport, detect_format, read_records, windows

GENBANK = """LOCUS       TEST1                     12 bp    DNA     linear   UNK 01-JAN-1980
DEFINITION  test.
ACCESSION   TEST1
VERSION     TEST1
FEATURES             Location/Qualifiers
ORIGIN
        1 acgtacgtac gt
//
"""


def test_fasta_plain_and_gz(tmp_path):
    text = ">r1 first\nACGT\nacgt\n>r2\nRRNN\n"
    (tmp_path / "a.fa").write_text(text)
    with gzip.open(tmp_path / "a.fasta.gz", "wt") as fh:
        fh.write(text)
    for name in ("a.fa", "a.fasta.gz"):
        recs = read_records(tmp_path / name)
        assert [(r.name, r.seq) for r in recs] == [("r1", "ACGTACGT"), ("r2", "NNNN")]


def test_fastq_gz_and_genbank(tmp_path):
    with gzip.open(tmp_path / "q.fq.gz", "wt") as fh:
        fh.write("@q1\nACGTN\n+\nIIIII\n@q2\nGG\n+\nII\n")
    assert [r.seq for r in read_records(tmp_path / "q.fq.gz")] == ["ACGTN", "GG"]
    (tmp_path / "g.gb").write_text(GENBANK)
    assert [r.seq for r in read_records(tmp_path / "g.gb")] == ["ACGTACGTACGT"]


def test_csv_tsv_labels(tmp_path):
    (tmp_path / "t.tsv").write_text("sequence\tclass\nACGT\tprom\nTTTT\tnon\n")
    recs = read_records(tmp_path / "t.tsv", seq_col="sequence", label_col="class")
    assert [(r.seq, r.label) for r in recs] == [("ACGT", "prom"), ("TTTT", "non")]


def test_bad_inputs_name_file_and_record(tmp_path):
    (tmp_path / "empty.fa").write_text("")
    with pytest.raises(DNAInputError, match="empty.fa: empty file"):
        read_records(tmp_path / "empty.fa")
    (tmp_path / "bad.fa").write_text(">ok\nACGT\n>noseq\n>weird\nAC1T\n")
    with pytest.raises(DNAInputError, match="bad.fa record 'noseq': record without sequence"):
        read_records(tmp_path / "bad.fa")
    report = ReadReport()
    recs = read_records(tmp_path / "bad.fa", on_error="skip", report=report)
    assert [r.name for r in recs] == ["ok"]
    assert len(report.errors) == 2 and "record 'weird': non-DNA character '1'" in report.errors[1]
    (tmp_path / "c.csv").write_text("seq,label\nACGT,1\nACGT,2\n")
    with pytest.raises(DNAInputError, match=r"c.csv: missing column\(s\) \['y'\]"):
        read_records(tmp_path / "c.csv", label_col="y")
    with pytest.raises(DNAInputError, match="c.csv record 'row 3': label '2' not in"):
        read_records(tmp_path / "c.csv", label_col="label", labels=["0", "1"])
    (tmp_path / "s.fa").write_text(">r\nACRT\n")
    with pytest.raises(DNAInputError, match="s.fa record 'r': IUPAC"):
        read_records(tmp_path / "s.fa", policy=BasePolicy(ambiguous="reject"))
    with pytest.raises(DNAInputError, match="cannot tell the format"):
        detect_format(tmp_path / "x.txt")
    with pytest.raises(DNAInputError, match="no such file"):
        read_records(tmp_path / "missing.fa")


def test_windows_stride_and_tail():
    seq = "".join("ACGT"[i % 4] for i in range(10))
    assert windows(seq, 4, 3) == [seq[0:4], seq[3:7], seq[6:10]]
    assert windows(seq, 4) == [seq[0:4], seq[4:8], seq[6:10]]
    assert windows("ACG", 4, min_len=4) == []
    assert windows("ACG", 4) == ["ACG"]
