use stash_macros::lifecycle;

#[lifecycle(name = "Demo", events(Start, Fail, Pause))]
pub enum Phase {
    #[initial]
    #[on(Start => Running, Fail => Failed)]
    Pending,
    #[on(Pause => Pending, Fail => Failed)]
    Running,
    #[terminal]
    Failed,
}

fn main() {}
