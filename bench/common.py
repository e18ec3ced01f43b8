"""What the benchmarks share: the markdown table of per-round ratios (mean +- std over rounds)."""
import statistics


def print_ratio_table(header: str, columns: tuple[str, str, str], ratios: dict, values: dict, fmt: str) -> None:
    """One row per name: mean +- std of its per-round ratios, and the mean of its values (printed with fmt)."""
    print(header)
    print(f"| {' | '.join(columns)} |")
    print("|---|---|---|")
    for name, rs in ratios.items():
        sd = statistics.stdev(rs) if len(rs) > 1 else 0.0
        print(f"| {name} | {statistics.mean(rs):.3f} +- {sd:.3f} | {format(statistics.mean(values[name]), fmt)} |")
