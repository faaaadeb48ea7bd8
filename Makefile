# The two commands a user needs: `make serve` and `make test`. Both set up what is missing first.
.PHONY: serve test setup large
serve:
	@scripts/serve.sh
test:
	@scripts/test.sh
setup:
	@scripts/setup.sh
large:
	@scripts/setup_large.sh
