package postgres

import (
	"bytes"
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// PreparedTransactionsSetting reads with pg_controldata the
// max_prepared_transactions the data directory was last run with: a start
// that is to recover the prepared transactions the data holds needs at
// least as many.
func (c *Cluster) PreparedTransactionsSetting(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	var out, stderr bytes.Buffer
	// Its labels, which are parsed, in English whatever the locale.
	cmd := c.Command(ctx, "pg_controldata", []string{"LC_ALL=C"}, "-D", c.DataDir)
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("pg_controldata: %w: %s", err, strings.TrimSpace(stderr.String()))
	}
	for line := range strings.Lines(out.String()) {
		name, value, ok := strings.Cut(line, ":")
		if ok && strings.TrimSpace(name) == "max_prepared_xacts setting" {
			return strconv.Atoi(strings.TrimSpace(value))
		}
	}
	return 0, fmt.Errorf("pg_controldata of %s shows no max_prepared_xacts setting", c.DataDir)
}
