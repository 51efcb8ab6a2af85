import gzip

import pytest

from domains.dna.alphabet import BasePolicy, DNAInputError, normalize
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


def test_csv_missing_field_and_non_latin1_are_named_errors(tmp_path):
    f = tmp_path / "t.csv"
    f.write_text("seq,label\nACGT,1\nACGA\nAC\u00e9T,0\nACGG,0\n", encoding="utf-8")
    report = ReadReport()
    recs = read_records(f, label_col="label", on_error="skip", report=report)
    assert [r.name for r in recs] == ["row 2", "row 5"]
    assert "t.csv record 'row 3': missing field(s) ['label']" in report.errors[0]
    assert "record 'row 4': non-DNA character '\u00e9' at position 2" in report.errors[1]
    with pytest.raises(DNAInputError, match="row 3.*missing field"):
        read_records(f, label_col="label")
    (tmp_path / "bad.csv").write_bytes(b"seq,label\nAC\xffGT,1\n")
    with pytest.raises(DNAInputError, match="bad.csv: not UTF-8"):
        read_records(tmp_path / "bad.csv", label_col="label")


def test_bom_csv_and_rna_and_peptide_warning(tmp_path):
    f = tmp_path / "bom.csv"
    f.write_bytes("\ufeffseq,label\nACGU,1\n".encode())
    (rec,) = read_records(f, label_col="label")
    assert rec.seq == "ACGT" and rec.label == "1"  # BOM dropped; U read as T (Biopython)
    (tmp_path / "p.fa").write_text(">pep\nMKVHDSRWAAKYGD\n>dna\nACGTRACGTACGT\n")
    with pytest.warns(UserWarning, match=r"p.fa record 'pep'.*protein"):
        recs = read_records(tmp_path / "p.fa")
    assert len(recs) == 2


def test_rejection_reason_names_the_policy_that_rejected():
    with pytest.raises(DNAInputError, match="lowercase IUPAC ambiguity code .*ambiguous='reject'"):
        normalize("ACrT", BasePolicy(ambiguous="reject", lowercase="upper"))
    with pytest.raises(DNAInputError, match="lowercase base .*lowercase='reject'"):
        normalize("ACrT", BasePolicy(ambiguous="n", lowercase="reject"))
    with pytest.raises(DNAInputError, match="non-DNA character 'x'"):
        normalize("ACxT")


def test_biopython_warnings_are_reissued_naming_the_file(tmp_path, monkeypatch):
    import warnings

    from Bio import BiopythonParserWarning, SeqIO
    from Bio.Seq import Seq
    from Bio.SeqRecord import SeqRecord

    def parse(handle, fmt):
        warnings.warn("odd header", BiopythonParserWarning, stacklevel=2)
        yield SeqRecord(Seq("ACGT"), id="r1")

    monkeypatch.setattr(SeqIO, "parse", parse)
    (tmp_path / "w.fa").write_text(">r1\nACGT\n")
    with pytest.warns(BiopythonParserWarning, match=r"w.fa: odd header"):
        assert read_records(tmp_path / "w.fa")[0].seq == "ACGT"
