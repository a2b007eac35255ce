"""Search spaces: validation errors, encoding round trips, sampling."""
import numpy as np
import pytest

from metaphi.meta import Categorical, Float, Int, Space


@pytest.mark.parametrize("make, match", [
    (lambda: Float(1.0, 1.0), "low < high"),
    (lambda: Float(2.0, 1.0), "low < high"),
    (lambda: Float(0.0, 1.0, log=True), "log-scale Float needs low > 0"),
    (lambda: Float(-1.0, 1.0, log=True), "log-scale Float needs low > 0"),
    (lambda: Float(0.0, float("inf")), "finite"),
    (lambda: Int(5, 5), "low < high"),
    (lambda: Int(0, 8, log=True), "log-scale Int needs low >= 1"),
    (lambda: Categorical([]), "at least one choice"),
    (lambda: Categorical([1, 1]), "distinct"),
    (lambda: Space({}), "at least one dimension"),
])
def test_invalid_spaces_are_clear_errors(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_invalid_types():
    with pytest.raises(TypeError, match="integers"):
        Int(0.5, 3)
    with pytest.raises(TypeError, match="must be a list"):
        Categorical("abc")
    with pytest.raises(TypeError, match="Float, Int or Categorical"):
        Space({"a": (0, 1)})


def test_validate_values():
    s = Space({"lr": Float(1e-3, 0.5, log=True), "steps": Int(1, 5),
               "act": Categorical(["relu", "tanh"])})
    assert s.validate({"lr": 0.1, "steps": 3, "act": "tanh"}) == {"lr": 0.1, "steps": 3, "act": "tanh"}
    with pytest.raises(ValueError, match=r"lr=0.9 is outside its range \[0.001, 0.5\]"):
        s.validate({"lr": 0.9, "steps": 3, "act": "tanh"})
    with pytest.raises(ValueError, match="steps=7 is outside"):
        s.validate({"lr": 0.1, "steps": 7, "act": "tanh"})
    with pytest.raises(ValueError, match="steps must be an integer"):
        s.validate({"lr": 0.1, "steps": 2.5, "act": "tanh"})
    with pytest.raises(ValueError, match="not one of its choices"):
        s.validate({"lr": 0.1, "steps": 2, "act": "gelu"})
    with pytest.raises(ValueError, match=r"missing \['act'\], unknown \['width'\]"):
        s.validate({"lr": 0.1, "steps": 2, "width": 3})
    with pytest.raises(ValueError, match="use REINFORCE"):
        s.to_unit({"lr": 0.1, "steps": 2, "act": "relu"})


def test_unit_encoding_round_trip_and_log_scale():
    s = Space({"lr": Float(1e-4, 1.0, log=True), "w": Int(16, 128), "x": Float(-2.0, 2.0)})
    v = {"lr": 1e-2, "w": 64, "x": 0.5}
    u = s.to_unit(v)
    assert np.all((u >= 0) & (u <= 1))
    assert u[0] == pytest.approx(0.5)  # 1e-2 is the log-midpoint of [1e-4, 1]
    back = s.from_unit(u)
    assert back["w"] == 64 and back["lr"] == pytest.approx(1e-2) and back["x"] == pytest.approx(0.5)
    # out-of-box coordinates are clipped to the bounds, integers rounded
    assert s.from_unit([-3.0, 2.0, 0.5]) == {"lr": pytest.approx(1e-4), "w": 128, "x": 0.0}


def test_sampling_covers_the_space_and_is_seeded():
    s = Space({"lr": Float(1e-3, 1.0, log=True), "k": Int(1, 3), "c": Categorical(["a", "b"])})
    xs = [s.sample(np.random.default_rng([0, i])) for i in range(400)]
    assert xs == [s.sample(np.random.default_rng([0, i])) for i in range(400)]
    for x in xs:
        s.validate(x)
    assert {x["k"] for x in xs} == {1, 2, 3} and {x["c"] for x in xs} == {"a", "b"}
    # log-uniform: about half of the draws below the log-midpoint 0.0316
    frac = np.mean([x["lr"] < 10 ** -1.5 for x in xs])
    assert 0.4 < frac < 0.6


def test_config_round_trip():
    s = Space({"lr": Float(1e-3, 1.0, log=True), "k": Int(1, 3), "c": Categorical([1, 2, 5])})
    assert Space.from_config(s.describe()).describe() == s.describe()
    with pytest.raises(ValueError, match="unknown type 'bool'"):
        Space.from_config({"a": {"type": "bool"}})
    with pytest.raises(ValueError, match="space entry 'a'"):
        Space.from_config({"a": {"type": "float", "low": 0, "hi": 1}})
