module github.com/sindri-db/sindri/spec/draupnir5

go 1.26.0

require (
	github.com/google/jsonapi v0.0.0-20160922220230-925ebf213646
	golang.org/x/oauth2 v0.0.0-20170928010508-bb50c06baba3
)

require (
	github.com/golang/protobuf v0.0.0-20171021043952-1643683e1b54 // indirect
	golang.org/x/net v0.10.0 // indirect
	golang.org/x/sync v0.1.0 // indirect
	google.golang.org/appengine v1.0.0 // indirect
)
