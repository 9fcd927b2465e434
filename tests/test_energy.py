"""Energy meters on recorded readings (tests/data/energy) and live runs; no hardware needed."""

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_device_bench import make_onnx

from device_bench.bench import run_bench
from device_bench.cli import main
from device_bench.energy import METERS, open_meter
from device_bench.energy.csv_log import CsvMeter
from device_bench.energy.estimate import EstimateMeter
from device_bench.energy.hwmon import HwmonMeter
from device_bench.energy.nvml import NvmlMeter
from device_bench.energy.pi5_pmic import COMMAND, Pi5PmicMeter, rail_watts
from device_bench.energy.rapl import RaplMeter
from device_bench.errors import BenchError
from device_bench.profiles import get_profile

DATA = Path(__file__).parent / "data" / "energy"
CSV_START = 1767225600.0  # the first timestamp of usb_meter.csv


def busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_rapl_sums_package_domains_across_a_counter_wrap(tmp_path):
    shutil.copytree(DATA / "rapl", tmp_path / "powercap")
    root = tmp_path / "powercap"
    meter = RaplMeter(base=str(root))
    assert meter.available() is None
    assert "intel-rapl:0, intel-rapl:1" in meter.source  # not the core sub-domain, not psys
    meter.start()
    # package-0 started 3,000,000 uJ below its max (262143328850): it wraps and ends at 1,500,000 uJ
    (root / "intel-rapl:0" / "energy_uj").write_text("1500000\n")
    (root / "intel-rapl:1" / "energy_uj").write_text(f"{51234567890 + 2_250_000}\n")
    (root / "intel-rapl:0:0" / "energy_uj").write_text("99999999999\n")  # ignored sub-domain
    (root / "intel-rapl:2" / "energy_uj").write_text("22345678901\n")  # ignored psys
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.0 + 1.5 + 2.25)
    assert reading.samples == 2 and reading.sample_hz is None and reading.seconds > 0


def test_rapl_unavailable_reasons(tmp_path):
    assert "no " in RaplMeter(base=str(tmp_path / "missing")).available()
    assert "no RAPL package domains" in RaplMeter(base=str(tmp_path)).available()
    shutil.copytree(DATA / "rapl", tmp_path / "powercap")
    (tmp_path / "powercap" / "intel-rapl:1" / "energy_uj").write_text("garbage\n")
    why = RaplMeter(base=str(tmp_path / "powercap")).available()
    assert why.startswith("cannot read ") and "intel-rapl:1/energy_uj" in why


@pytest.mark.skipif(sys.platform != "linux" or os.geteuid() == 0, reason="root reads any file")
def test_rapl_root_only_counter_is_the_reason(tmp_path):
    shutil.copytree(DATA / "rapl", tmp_path / "powercap")
    (tmp_path / "powercap" / "intel-rapl:0" / "energy_uj").chmod(0o200)
    assert "readable by root only" in RaplMeter(base=str(tmp_path / "powercap")).available()


def test_hwmon_integrates_an_ina226_that_changes_during_the_run(tmp_path):
    shutil.copytree(DATA / "hwmon", tmp_path / "hwmon")
    power = tmp_path / "hwmon" / "hwmon2" / "power1_input"
    meter = HwmonMeter(base=str(tmp_path / "hwmon"), interval_s=0.02)
    assert meter.available() is None and "hwmon2 (ina226) power1_input" in meter.source
    t0 = time.perf_counter()
    meter.start()
    time.sleep(0.3)
    switch = time.perf_counter()
    (power.parent / "new").write_text("5100000\n")  # 2.04 W -> 5.1 W, replaced whole as sysfs would
    os.replace(power.parent / "new", power)
    time.sleep(0.3)
    reading = meter.stop()
    t1 = time.perf_counter()
    expected = 2.04 * (switch - t0) + 5.1 * (t1 - switch)
    assert reading.joules == pytest.approx(expected, abs=0.2)  # the change lands between two samples
    assert 2.04 * reading.seconds < reading.joules < 5.1 * reading.seconds
    assert reading.samples >= 10 and 10 < reading.sample_hz <= 55


def test_hwmon_without_a_power_sensor(tmp_path):
    shutil.copytree(DATA / "hwmon", tmp_path / "hwmon")
    shutil.rmtree(tmp_path / "hwmon" / "hwmon2")
    assert "no hwmon device with power1_input" in HwmonMeter(base=str(tmp_path / "hwmon")).available()


def test_pi5_pmic_recorded_output():
    text = (DATA / "pi5_pmic_read_adc.txt").read_text()
    rails = rail_watts(text)
    assert len(rails) == 12  # EXT5V_V and BATT_V have no current
    assert rails["VDD_CORE"] == pytest.approx(2.4957 * 0.8722903)
    assert sum(rails.values()) == pytest.approx(3.45256070, abs=1e-6)

    commands = []

    def runner(command: list[str]) -> str:
        commands.append(command)
        return text

    meter = Pi5PmicMeter(runner=runner, interval_s=0.02)
    assert meter.available() is None and "12 rails" in meter.source
    meter.start()
    time.sleep(0.2)
    reading = meter.stop()
    assert reading.joules == pytest.approx(3.45256070 * reading.seconds)
    assert reading.samples == len(commands) - 1 >= 3  # one read was available()'s
    assert all(c == COMMAND for c in commands)


def test_pi5_pmic_unavailable_reasons():
    assert "vcgencmd not found" in Pi5PmicMeter(runner=lambda c: subprocess.run(
        ["/nonexistent/vcgencmd"], capture_output=True, text=True, check=True).stdout).available()

    def pi4(command: list[str]) -> str:
        raise subprocess.CalledProcessError(255, command, output='error=2 error_msg="Command not registered"\n')

    why = Pi5PmicMeter(runner=pi4).available()
    assert why == 'vcgencmd pmic_read_adc failed: error=2 error_msg="Command not registered"'
    assert "no rail currents" in Pi5PmicMeter(runner=lambda c: "").available()


def test_csv_log_integrates_its_samples_inside_the_window():
    clock = iter([CSV_START + 2.25, CSV_START + 10.75]).__next__  # the run's start and stop
    meter = CsvMeter(str(DATA / "usb_meter.csv"), "unix_s", "power_w", clock=clock)
    assert meter.available() is None
    meter.start()
    reading = meter.stop()
    with open(DATA / "usb_meter.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["power_w"]]
    times = np.array([float(r["unix_s"]) for r in rows])
    watts = np.array([float(r["power_w"]) for r in rows])
    dense = np.linspace(CSV_START + 2.25, CSV_START + 10.75, 200_001)
    assert reading.joules == pytest.approx(np.trapezoid(np.interp(dense, times, watts), dense), rel=1e-6)
    assert reading.seconds == pytest.approx(8.5)
    assert reading.samples == 17 and reading.sample_hz == pytest.approx(17 / 8.5)


def test_csv_log_window_outside_the_file_says_both_ranges():
    clock = iter([CSV_START + 100, CSV_START + 101]).__next__
    meter = CsvMeter(str(DATA / "usb_meter.csv"), "unix_s", "power_w", clock=clock)
    meter.start()
    with pytest.raises(BenchError) as e:
        meter.stop()
    assert "no samples inside the measured window 1767225700.000..1767225701.000" in str(e.value)
    assert "spans 1767225600.000..1767225612.000" in str(e.value) and "\n" not in str(e.value)


def test_csv_log_unavailable_reasons(tmp_path):
    assert CsvMeter(None).available() == "no --energy-csv FILE given"
    assert "has no column 'timestamp'" in CsvMeter(str(DATA / "usb_meter.csv")).available()
    assert CsvMeter(str(tmp_path / "none.csv")).available().startswith("cannot read ")


def test_estimate_counts_busy_cores():
    profile = get_profile("pi4")
    meter = EstimateMeter(profile)
    assert meter.available() is None and meter.kind == "estimated" and profile.source in meter.source
    meter.start()
    busy(0.3)
    reading = meter.stop()
    idle_only = profile.idle_w * reading.seconds
    assert idle_only < reading.joules <= (profile.idle_w + profile.active_w_per_core) * reading.seconds * 1.05

    meter.start()
    time.sleep(0.3)
    resting = meter.stop()
    assert resting.joules == pytest.approx(profile.idle_w * resting.seconds, rel=0.05)


def test_nvml_unavailable_gives_a_reason():
    try:
        import pynvml  # noqa: F401
    except ImportError:
        assert NvmlMeter(0).available() == "pynvml is not installed (pip install nvidia-ml-py)"
    else:
        why = NvmlMeter(10_000).available()
        assert why.startswith("NVML cannot read GPU 10000's energy counter: ") and "\n" not in why


def test_auto_falls_through_to_estimate_with_reasons():
    meter, skipped = open_meter("auto", get_profile("generic"))
    tried = [s["meter"] for s in skipped]
    assert tried == list(METERS[: len(tried)]) and "nvml" not in tried and "csv" not in tried
    assert all(s["why"] and "\n" not in s["why"] for s in skipped)
    hardware = (Path("/sys/class/powercap").exists() or list(Path("/sys/class/hwmon").glob("*/power1_input"))
                or shutil.which("vcgencmd"))
    if not hardware:
        assert meter.name == "estimate" and tried == ["rapl", "hwmon", "pi5-pmic"]


def test_auto_tries_nvml_and_csv_only_when_asked(tmp_path):
    meter, skipped = open_meter("auto", get_profile("generic"), energy_csv=str(tmp_path / "none.csv"),
                                nvml_device=0)
    tried = [s["meter"] for s in skipped]
    if meter.name == "estimate":
        assert tried[-2:] == ["nvml", "csv"]


def test_named_meter_that_is_unavailable_is_an_error():
    with pytest.raises(BenchError, match="energy meter csv is not available here: no --energy-csv FILE given"):
        open_meter("csv", get_profile("generic"))
    with pytest.raises(BenchError, match="unknown energy meter"):
        open_meter("joulescope", get_profile("generic"))


def test_bench_result_carries_energy(tmp_path):
    make_onnx(tmp_path / "tiny.onnx")
    r = run_bench(str(tmp_path / "tiny.onnx"), prompt_tokens=8, decode_tokens=4, threads=1, repeats=2, warmup=0)
    energy = r["energy"]
    assert set(energy) == {"meter", "kind", "joules", "seconds", "average_watts", "joules_per_token", "samples",
                           "sample_hz", "source"}
    assert energy["kind"] in ("measured", "estimated") and energy["joules"] > 0
    assert energy["joules_per_token"] == pytest.approx(energy["joules"] / ((8 + 4) * 2))
    assert energy["average_watts"] == pytest.approx(energy["joules"] / energy["seconds"])
    assert isinstance(r["energy_skipped"], list) and r["emulated"] is None
    assert 0 <= r["cpu_utilisation"] <= 1.5
    json.dumps(r)


def test_bench_with_an_external_csv_log(tmp_path, capsys):
    make_onnx(tmp_path / "tiny.onnx")
    now = time.time()
    log = tmp_path / "meter.csv"
    log.write_text("timestamp,watts\n" + "".join(f"{now - 5 + k / 1000:.3f},4.0\n" for k in range(60_000)))
    out = tmp_path / "r.json"
    argv = [str(tmp_path / "tiny.onnx"), "--prompt-tokens", "8", "--decode-tokens", "64", "--threads", "1",
            "--repeats", "2", "--warmup", "0", "--meter", "csv", "--energy-csv", str(log), "--json", str(out)]
    assert main(argv) == 0
    assert "J/token" in capsys.readouterr().out
    energy = json.loads(out.read_text())["energy"]
    assert energy["meter"] == "csv" and energy["kind"] == "measured"
    assert energy["average_watts"] == pytest.approx(4.0)
    assert energy["source"].startswith("external meter log ")


def test_cli_energy_csv_columns_option(tmp_path, capsys):
    make_onnx(tmp_path / "tiny.onnx")
    assert main([str(tmp_path / "tiny.onnx"), "--meter", "csv", "--energy-csv", str(DATA / "usb_meter.csv")]) == 2
    assert "has no column 'timestamp'" in capsys.readouterr().err
    argv = [str(tmp_path / "tiny.onnx"), "--meter", "csv", "--energy-csv", str(DATA / "usb_meter.csv"),
            "--energy-csv-columns", "unix_s", "power_w"]
    assert main(argv) == 2  # the recorded log's window is in the past
    assert "has no samples inside the measured window" in capsys.readouterr().err


def nvml_trace() -> dict:
    return json.loads((DATA / "nvml_trace.json").read_text())


def test_idle_power_and_joules_per_token_above_idle_on_a_recorded_nvml_trace():
    from device_bench.energy.windows import above_idle, counter_update_hz, idle_power, window_joules

    fx = nvml_trace()
    trace = fx["samples"]
    idle = idle_power(trace, *fx["idle_window"])
    # counter 9,412,733,905 -> 9,413,864,905 mJ over 15.0 s: 1131.0 J / 15 s
    assert idle["watts"] == pytest.approx(75.4)
    assert idle["seconds"] == pytest.approx(15.0) and idle["reads"] == 7
    # power reads 75.12, 75.48, 74.96, 75.33, 75.71, 75.55, 75.29 W
    assert idle["power_reads_w"] == pytest.approx({"min": 74.96, "median": 75.33, "max": 75.71})

    t0, t1 = fx["measured_window"]
    joules = window_joules(trace, t0, t1)
    # 9,416,770,807 - 9,415,483,307 mJ = 1,287,500 mJ over 3.125 s
    assert joules == pytest.approx(1287.5)
    entry = above_idle(joules, t1 - t0, idle["watts"], fx["measured_tokens"])
    assert fx["measured_tokens"] == 64 * (64 + 128) * 3  # batch 64, 64-token prompts, 128 steps, 3 repeats
    assert entry["average_watts"] == pytest.approx(412.0)  # 1287.5 J / 3.125 s
    assert entry["joules_per_token"] == pytest.approx(0.0349256727)  # 1287.5 J / 36,864 tokens
    # above idle: 1287.5 J - 75.4 W x 3.125 s = 1287.5 - 235.625 = 1051.875 J
    assert entry["joules_above_idle"] == pytest.approx(1051.875)
    assert entry["average_watts_above_idle"] == pytest.approx(336.6)  # 1051.875 J / 3.125 s
    assert entry["joules_per_token_above_idle"] == pytest.approx(0.028533935546875)  # 1051.875 / 36,864
    # the counter changed at each of the window's 6 reads after the first: 5 changes in 3.125 s
    assert counter_update_hz(trace, t0, t1) == pytest.approx(1.6)


def test_window_edges_between_reads_are_interpolated():
    from device_bench.energy.windows import counter_at, window_joules

    trace = nvml_trace()["samples"]
    # halfway between the reads at 3071.502 s (9,415,483,307 mJ) and 3072.127 s (+256,875 mJ)
    assert counter_at(trace, 3071.8145) == pytest.approx(9_415_483_307 + 128_437.5)
    assert counter_at(trace, 3072.127) == 9_415_740_182  # exactly at a read
    # 3071.8145 .. 3074.3145 s: (9,416,512,057 + 129,375) - (9,415,483,307 + 128,437.5) = 1,029,687.5 mJ
    assert window_joules(trace, 3071.8145, 3074.3145) == pytest.approx(1029.6875)


def test_energy_windows_refuse_what_they_cannot_know():
    from device_bench.energy.windows import above_idle, window_joules

    trace = nvml_trace()["samples"]
    with pytest.raises(BenchError, match="outside the energy counter trace"):
        window_joules(trace, 3050.0, 3060.0)  # starts before the first read
    with pytest.raises(BenchError, match="must end after it starts"):
        window_joules(trace, 3060.0, 3060.0)
    with pytest.raises(BenchError, match="tokens > 0"):
        above_idle(10.0, 1.0, 75.0, 0)
    whole_board_only = above_idle(1287.5, 3.125, None, 36864)
    assert "joules_per_token_above_idle" not in whole_board_only and whole_board_only["idle_watts"] is None


def test_nvml_recorder_without_a_gpu_says_why():
    from device_bench.energy.nvml import NvmlRecorder

    with pytest.raises(BenchError, match="pynvml is not installed|NVML cannot read GPU"):
        NvmlRecorder(10_000).start()
