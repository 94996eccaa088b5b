"""Stage `prepare`: download/verify/extract/parse (or generate) the dataset into a manifest."""

from _common import params_from, parser, run

from glsim.data.stage import prepare


def main() -> None:
    print(f"manifest: {prepare(params_from(parser(__doc__).parse_args()))}")


if __name__ == "__main__":
    run(main, tracking=False)
