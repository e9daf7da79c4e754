// Where the page finds the API. Written at deploy time from Terraform outputs (see docs/web.md);
// this checked-in version is for the local stack: an empty apiBase means "the origin that served
// this page", i.e. the local router of `make dev`, and the local stack needs no key.
window.IMGCLASSIFY_CONFIG = {apiBase: "", apiKey: ""};
