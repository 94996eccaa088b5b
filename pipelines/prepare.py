"""Stage `prepare`: download/verify/extract/parse (or generate) the dataset into a manifest."""

from _common import params_from, parser, run

from glsim.data.registry import prepare_dataset


def main() -> None:
    params = params_from(parser(__doc__).parse_args())
    d = params.data
    path = prepare_dataset(
        d.dataset_source, d.raw_dir, name=d.dataset, params=params, force=True
    )
    print(f"manifest: {path}")


if __name__ == "__main__":
    run(main, tracking=False)
