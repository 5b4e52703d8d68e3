import re

from glonet_keras import demo


def test_demo_runs_end_to_end(tmp_path, capsys):
    """`make demo` in miniature: train, per-block report, SavedModel + REST answer, pretrained."""
    demo.main(["--num_blocks", "3", "--width", "16", "--epochs", "1", "--output_dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert re.search(r"test accuracy: 0\.\d{4}", out)
    table = re.findall(r"^\s+(\d+)\s+(0\.\d{3})\s+(0\.\d{3})\s+(0\.\d{4})$", out, re.M)
    assert [int(row[0]) for row in table] == [1, 2, 3]
    assert abs(sum(float(row[1]) for row in table) - 1.0) < 0.01  # shares of the sum add up
    assert (tmp_path / "serving" / "glonet_mlp" / "1" / "saved_model.pb").exists()
    difference = float(re.search(r"max \|SavedModel - Keras\| = (\S+)", out).group(1))
    assert difference < 1e-5
    measured, published = re.search(
        r"glonet_cnn_digits: test accuracy (0\.\d+) \(published (0\.\d+)\)", out
    ).groups()
    assert abs(float(measured) - float(published)) <= 0.005
