"""`make bench`: every benchmark in turn, each printing its table and verdict."""

from __future__ import annotations

from bench import budget, economy, objectstore, scale, semantics, throughput


def main() -> None:
    for name, bench in (
        ("1. throughput", throughput.run),
        ("1b. throughput, 7 rows per request", throughput.run_week),
        ("2. budget", budget.run),
        ("3. scale", scale.run),
        ("4. economy", economy.run),
        ("5. semantics", semantics.run),
        ("6. object storage", objectstore.run),
    ):
        print(f"\n== {name} ==", flush=True)
        bench()


if __name__ == "__main__":
    main()
