# The two commands a user needs: `make serve` and `make test`. Both set up what is missing first.
.PHONY: serve test setup
serve:
	@scripts/serve.sh
test:
	@scripts/test.sh
setup:
	@scripts/setup.sh
