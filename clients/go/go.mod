module github.com/llamafleet/llamafleet/clients/go

go 1.19

require (
	google.golang.org/genproto v0.0.0-20200526211855-cb27e3aa2013
	google.golang.org/grpc v1.33.3
	google.golang.org/protobuf v1.28.1
)

require (
	github.com/golang/protobuf v1.5.2 // indirect
	golang.org/x/net v0.3.0 // indirect
	golang.org/x/sys v0.5.0 // indirect
	golang.org/x/text v0.7.0 // indirect
)

// Debian's packaged Go sources (apt, see scripts/setup_go.sh): no module proxy is reachable.
replace (
	github.com/golang/protobuf => /usr/share/gocode/src/github.com/golang/protobuf
	github.com/google/go-cmp => /usr/share/gocode/src/github.com/google/go-cmp
	golang.org/x/net => /usr/share/gocode/src/golang.org/x/net
	golang.org/x/oauth2 => /usr/share/gocode/src/golang.org/x/oauth2
	golang.org/x/sys => /usr/share/gocode/src/golang.org/x/sys
	golang.org/x/text => /usr/share/gocode/src/golang.org/x/text
	google.golang.org/genproto => /usr/share/gocode/src/google.golang.org/genproto
	google.golang.org/grpc => /usr/share/gocode/src/google.golang.org/grpc
	google.golang.org/protobuf => /usr/share/gocode/src/google.golang.org/protobuf
)

// Named in those go.mod files but never compiled for a client: empty stand-ins.
replace (
	cloud.google.com/go/compute/metadata => ./debstubs/cloud.google.com/go/compute/metadata
	github.com/cncf/udpa/go => ./debstubs/github.com/cncf/udpa/go
	github.com/envoyproxy/go-control-plane => ./debstubs/github.com/envoyproxy/go-control-plane
	github.com/golang/glog => ./debstubs/github.com/golang/glog
	github.com/google/uuid => ./debstubs/github.com/google/uuid
	golang.org/x/lint => ./debstubs/golang.org/x/lint
	golang.org/x/mod => ./debstubs/golang.org/x/mod
	golang.org/x/term => ./debstubs/golang.org/x/term
	golang.org/x/tools => ./debstubs/golang.org/x/tools
	google.golang.org/appengine => ./debstubs/google.golang.org/appengine
	honnef.co/go/tools => ./debstubs/honnef.co/go/tools
)
