package postgres

import "sort"

// WithCloneSettings gives clones these values instead of sindri's (a
// setting sindri does not set is added) until restore is called:
// BenchmarkIdleClones compares the idle cost of sindri's settings with
// Postgres's defaults.
func WithCloneSettings(values map[string]string) (restore func()) {
	saved := cloneDefaults
	changed := append([]setting(nil), cloneDefaults...)
	seen := map[string]bool{}
	for i, s := range changed {
		if v, ok := values[s.name]; ok {
			changed[i].value = v
			seen[s.name] = true
		}
	}
	var added []string
	for name := range values {
		if !seen[name] {
			added = append(added, name)
		}
	}
	sort.Strings(added)
	for _, name := range added {
		changed = append(changed, setting{name, values[name]})
	}
	cloneDefaults = changed
	return func() { cloneDefaults = saved }
}
