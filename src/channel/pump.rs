//! Who runs a pipeline. Completions arrive on any processor, and WSK may complete a request
//! inline, inside the call that issued it; a pipeline that ran from each of them would
//! recurse and run twice at once. So one caller at a time is the pump: the others only ask
//! it for another pass, and it loops until a pass finds nothing new.

#[derive(Default)]
pub(crate) struct Pump {
    running: bool,
    again: bool,
}

impl Pump {
    /// Becomes the pump; `false` if another caller is (it will pass again for us).
    pub(crate) fn begin(&mut self) -> bool {
        if self.running {
            self.again = true;
            return false;
        }
        self.running = true;
        true
    }

    /// Stops pumping, unless something asked for another pass meanwhile.
    pub(crate) fn end(&mut self) -> bool {
        if self.again {
            self.again = false;
            return false;
        }
        self.running = false;
        true
    }
}
