import os
import re

import numpy as np

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_readme_usage_example_runs():
    """The README's usage example runs as written (with 2 epochs instead of 10, to stay fast)."""
    text = open(README, encoding="utf-8").read()
    example = re.search(r"## Usage\n\n```python\n(.*?)```", text, re.S).group(1)
    assert "epochs=10" in example
    namespace = {}
    exec(compile(example.replace("epochs=10", "epochs=2"), "README.md", "exec"), namespace)
    assert namespace["exits"].shape == (360, 30, 10)
    assert namespace["first_8"].predict(namespace["x_test"][:4], verbose=0).shape == (4, 10)
    accuracy = namespace["model"].evaluate(namespace["x_test"], namespace["y_test"], verbose=0)[1]
    assert np.isfinite(accuracy) and accuracy > 0.5
