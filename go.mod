module github.com/sindri-db/sindri

go 1.26.0

require (
	github.com/BurntSushi/toml v1.6.0
	github.com/containerd/btrfs/v2 v2.0.0
	github.com/dustin/go-humanize v1.1.0
	github.com/google/jsonapi v1.0.0
	github.com/gorilla/mux v1.8.1
	github.com/jackc/pgx/v5 v5.12.0
	github.com/klauspost/compress v1.20.3
	github.com/mistifyio/go-zfs/v3 v3.1.0
	golang.org/x/oauth2 v0.37.0
	golang.org/x/sys v0.49.0
)

require (
	github.com/google/uuid v1.2.0 // indirect
	github.com/jackc/pgpassfile v1.0.0 // indirect
	github.com/jackc/pgservicefile v0.0.0-20240606120523-5a60cdf6a761 // indirect
	github.com/jackc/puddle/v2 v2.2.3 // indirect
	golang.org/x/sync v0.22.0 // indirect
	golang.org/x/text v0.41.0 // indirect
)
