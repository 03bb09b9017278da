package engine

// WithoutScrub is opts with the scrub after an anonymisation script left
// out, for the benchmark that measures what the scrub costs; images
// finalised so are not marked anonymised.
func WithoutScrub(opts Options) Options {
	opts.skipScrub = true
	return opts
}
