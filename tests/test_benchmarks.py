from benchmarks import cnn_speed


def test_cnn_speed_times_both_models_side_by_side():
    rows = cnn_speed.run_benchmark(depths=(8,), images=64, width=4, batch_size=32, epochs=1,
                                   image_size=8, log=lambda line: None)
    (row,) = rows
    assert row["depth"] == 8
    for key in ("glonet", "resnet_bn"):
        assert row[f"{key}_s_per_epoch"] > 0 and row[f"{key}_warmup_s"] > 0
    assert row["ratio"] == row["glonet_s_per_epoch"] / row["resnet_bn_s_per_epoch"]
