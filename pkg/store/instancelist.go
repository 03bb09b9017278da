package store

import (
	"cmp"
	"context"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// summaryCache keeps the instance summaries ListInstanceSummaries last
// read, their passwords opened, each under its row's version: the row's
// xmin (the transaction that wrote this version of the row, which any
// UPDATE replaces) and its updated_at (which every UPDATE sets, so that
// even an xmin reused after wraparound does not match). A listing then
// reads each row's id and version, and the rest of the rows only for the
// versions it does not hold: a thousand instances cost a thousand small
// rows, not a thousand rows with their sealed password to scan and open.
//
// The opened passwords live only in this process's memory, as they do,
// row after row, while a listing is built; they stay sealed at rest. The
// cache is bounded by the rows that exist: a listing drops the entries of
// its scope (one owner's, or every instance) that it no longer finds, and
// DeleteInstance drops the deleted one's.
type summaryCache struct {
	mu      sync.Mutex
	entries map[int64]*summaryEntry
	// listing counts the listings; an entry's listed is the last that
	// found its row.
	listing uint64
	// scopes are the last listing of each scope (an owner, or "" for
	// every instance) under its digest; a listing whose scope's digest
	// has not changed is that listing again, without reading a row.
	scopes map[string]scopeListing
}

// maxListingScopes bounds the listings kept whole: one per owner who
// lists, and one of every instance.
const maxListingScopes = 64

// scopeListing is one scope's listing and the digest of the rows it was
// read from.
type scopeListing struct {
	digest listDigest
	out    []Instance
}

// listDigest tells one state of a scope's rows from any other: their
// count, and the exclusive or of a 64-bit hash of each row's id under its
// xmin. Every committed change of a row gives it a new xmin, an insert
// adds a term and a delete removes one (ids are never reused), so two
// states with the same digest differ with a probability of 2^-64.
type listDigest struct {
	count, hash int64
}

// digestColumns are the digest of the rows of instance_versions, a narrow
// mirror of the instances' ids whose rows a trigger changes in the
// transaction that changes the instance's (see its migration): a scan of
// a few pages, where instances' wide rows took hundreds.
const digestColumns = `count(*), coalesce(bit_xor(hashint8extended(id, xmin::text::bigint)), 0)`

type summaryEntry struct {
	version rowVersion
	inst    Instance
	listed  uint64
}

// rowVersion tells one committed version of a row from any other.
type rowVersion struct {
	xmin      uint32
	updatedAt time.Time
}

func (v rowVersion) same(o rowVersion) bool {
	return v.xmin == o.xmin && v.updatedAt.Equal(o.updatedAt)
}

// versionedRow is a row's id and version.
type versionedRow struct {
	id      int64
	version rowVersion
}

// ListInstanceSummaries is ListInstances without the certificates and
// private keys (left empty), oldest first: what GET /instances shows. It
// reads the digest of the scope's rows and, when the digest is the last
// listing's, answers that listing again; otherwise it reads every row's
// version, then only the rows whose version it has not read before (see
// summaryCache); each instance is as it was at some
// moment during the call, a row changed meanwhile shown as it became, one
// deleted meanwhile left out. An owner's rows are found by the index on
// owner.
//
// The listing is shared, with the cache and with every caller given the
// same listing: a caller reads it and copies what it would change (an
// instance's ExpiresAt points into it too). A copy for each caller was
// most of what a listing of a thousand instances allocated.
func (s *Store) ListInstanceSummaries(ctx context.Context, owner string) ([]Instance, error) {
	// One row of three arrays, not a row per instance: a thousand rows'
	// messages and scans cost more than the query. The arrays share one
	// order, whatever it is (one pass of one aggregation), sorted here
	// rather than three times by Postgres.
	c := &s.summaries
	scope := ""
	var args []any
	if owner != "" {
		scope, args = ` where owner = $1`, []any{owner}
	}
	c.mu.Lock()
	last, ok := c.scopes[owner]
	c.mu.Unlock()
	if ok {
		var now listDigest
		if err := s.pool.QueryRow(ctx, `select `+digestColumns+` from instance_versions`+scope, args...).Scan(&now.count, &now.hash); err != nil {
			return []Instance{}, wrap(err, "list instances")
		}
		if now == last.digest {
			return last.out, nil
		}
	}

	// The digest in the statement that reads the versions: one snapshot.
	versionsOf := `with digest (count, hash) as (select ` + digestColumns + ` from instance_versions` + scope + `)
		select coalesce(array_agg(id), '{}'), coalesce(array_agg(xmin::text::bigint), '{}'),
		coalesce(array_agg(updated_at), '{}'), (select count from digest), (select hash from digest)
		from instances` + scope
	var ids, xmins []int64
	var updatedAts []time.Time
	var digest listDigest
	if err := s.pool.QueryRow(ctx, versionsOf, args...).Scan(&ids, &xmins, &updatedAts, &digest.count, &digest.hash); err != nil {
		return []Instance{}, wrap(err, "list instances")
	}
	versions := make([]versionedRow, len(ids))
	for i := range ids {
		versions[i] = versionedRow{id: ids[i], version: rowVersion{xmin: uint32(xmins[i]), updatedAt: updatedAts[i]}}
	}
	slices.SortFunc(versions, func(a, b versionedRow) int { return cmp.Compare(a.id, b.id) })

	out := make([]Instance, len(versions))
	var missing []int64
	c.mu.Lock()
	for i, v := range versions {
		if e, ok := c.entries[v.id]; ok && e.version.same(v.version) {
			out[i] = e.inst
		} else {
			missing = append(missing, v.id)
		}
	}
	c.mu.Unlock()

	read := map[int64]*summaryEntry{}
	if len(missing) > 0 {
		var err error
		if read, err = s.readSummaries(ctx, missing); err != nil {
			return []Instance{}, wrap(err, "list instances")
		}
	}

	c.mu.Lock()
	if c.entries == nil {
		c.entries = map[int64]*summaryEntry{}
	}
	c.listing++
	kept := out[:0]
	for i, v := range versions {
		if out[i].ID == 0 {
			e, ok := read[v.id]
			if !ok {
				continue // deleted since it was listed
			}
			c.entries[v.id] = e
			out[i] = e.inst
		}
		if e := c.entries[v.id]; e != nil {
			e.listed = c.listing
		}
		kept = append(kept, out[i])
	}
	for id, e := range c.entries {
		if e.listed != c.listing && (owner == "" || e.inst.Owner == owner) {
			delete(c.entries, id)
		}
	}
	// Only a listing that read every row it was told of is the state its
	// digest names.
	if len(kept) == len(versions) {
		if c.scopes == nil {
			c.scopes = map[string]scopeListing{}
		}
		if _, known := c.scopes[owner]; !known && len(c.scopes) >= maxListingScopes {
			for other := range c.scopes {
				delete(c.scopes, other)
				break
			}
		}
		c.scopes[owner] = scopeListing{digest: digest, out: kept}
	}
	c.mu.Unlock()
	return kept, nil
}

// readSummaries reads and opens the summaries of the instances ids, with
// their versions.
func (s *Store) readSummaries(ctx context.Context, ids []int64) (map[int64]*summaryEntry, error) {
	rows, _ := s.pool.Query(ctx, `select `+summaryColumns+`, xmin from instances where id = any($1)`, ids)
	out := make(map[int64]*summaryEntry, len(ids))
	var e summaryEntry
	_, err := pgx.ForEachRow(rows, append(summaryFields(&e.inst), &e.version.xmin), func() error {
		var err error
		if e.inst.Password, err = s.open("instances", "password", e.inst.ID, e.inst.Password); err != nil {
			return err
		}
		e.version.updatedAt = e.inst.UpdatedAt
		read := e
		out[read.inst.ID] = &read
		e = summaryEntry{} // pgx would scan the next expiry into the one read now points to
		return nil
	})
	return out, err
}

// forgetSummary drops instance id's cached summary.
func (s *Store) forgetSummary(id int64) {
	s.summaries.mu.Lock()
	delete(s.summaries.entries, id)
	s.summaries.mu.Unlock()
}
