"""Render `dvc plots show` offline and take a screenshot of the page with headless Chromium.

The page DVC writes loads Vega from a CDN; this inlines local copies instead (get them once with
`npm pack vega@5 vega-lite@5 vega-embed@6` and unpack the archives into one folder).

    python scripts/screenshot_plots.py --vega-dir /tmp/vega --out dvc_plots/screenshot.png

Run from the project root (or pass --project) after `dvc repro`.
"""

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

LIBRARIES = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js")
PAGE = """<!DOCTYPE html>
<html>
<head>
  <meta charset="utf-8">
  <title>DVC plots</title>
  {inline}
  <style>body {{ font-family: sans-serif; }} table {{ border-spacing: 15px; }}</style>
</head>
<body>
{{plot_divs}}
</body>
</html>
"""


def offline_template(vega_dir: Path) -> str:
    """An HTML template for `dvc plots show --html-template` with the Vega libraries inlined."""
    scripts = []
    for name in LIBRARIES:
        found = sorted(vega_dir.rglob(name))
        if not found:
            raise SystemExit(f"error: {name} not found under '{vega_dir}': npm pack vega vega-lite vega-embed there")
        scripts.append(f"<script>{found[0].read_text()}</script>")
    return PAGE.format(inline="\n".join(scripts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vega-dir", type=Path, required=True, help="a folder holding the three Vega .min.js files")
    parser.add_argument("--project", type=Path, default=Path())
    parser.add_argument("--out", type=Path, default=Path("dvc_plots/screenshot.png"))
    parser.add_argument("--window-size", default="1400,4200", help="WIDTH,HEIGHT of the browser window")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as temporary:
        template = Path(temporary) / "offline.html"
        template.write_text(offline_template(args.vega_dir))
        html_dir = Path(temporary) / "plots"
        subprocess.run(
            ["dvc", "plots", "show", "--html-template", str(template), "-o", str(html_dir)],
            cwd=args.project,
            check=True,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--virtual-time-budget=10000",
                f"--window-size={args.window_size}",
                f"--screenshot={args.out.resolve()}",
                (html_dir / "index.html").resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
        )
    print(f"screenshot: {args.out}")


if __name__ == "__main__":
    main()
