"""The local Hub's routers, one per concern. Each module exposes `router`, an `APIRouter` that
`publisher.hubserver.app.create_app` includes; handlers reach the store and auth through
`publisher.hubserver.context.hub_of(request)`."""
